// Generates vectors.json: encrypted WeChat callbacks made by a third-party
// implementation (@wecom/crypto 1.0.1 from the npm registry), for the
// gateway's conformance tests (conformance/test_wechat.py).
//
//   cd conformance/wechat && npm install && node gen_vectors.js > vectors.json
//
// Deterministic: fixed random prefixes, timestamps and nonces. Before
// writing anything it checks the library against Tencent's published WeCom
// sample (VerifyURL and DecryptMsg), so the vectors are WeChat's format.
// @wecom/crypto checks neither the receive id nor the padding (wechat.md
// §11): the negative cases are written by hand in test_wechat.py.
'use strict';
const assert = require('assert');
const { encrypt, decrypt, getSignature } = require('@wecom/crypto');

// Tencent's sample
const W = { token: 'QDG6eK', key: 'jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C', id: 'wx5823bf96d3bd56c7' };
const echo = 'P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==';
assert.strictEqual(getSignature(W.token, '1409659589', '263014780', echo),
  '5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3');
assert.strictEqual(decrypt(W.key, echo).message, '1616140317555161061');
assert.strictEqual(decrypt(W.key, echo).id, W.id);

// The accounts of conformance/test_wechat.py
const MP = { token: 'pamtest', key: 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG', id: 'wxb11529c136998cb6' };

function hdr(from, ct, type) {
  return `<xml><ToUserName><![CDATA[gh_vec]]></ToUserName><FromUserName><![CDATA[${from}]]></FromUserName>` +
    `<CreateTime>${ct}</CreateTime><MsgType><![CDATA[${type}]]></MsgType>`;
}
const M = [
  ['text', hdr('oVec1', 1710000001, 'text') + '<Content><![CDATA[第三方 vector ]]]]><![CDATA[> & <ok>]]></Content><MsgId>7000000000000000001</MsgId></xml>'],
  ['image', hdr('oVec1', 1710000002, 'image') + '<PicUrl><![CDATA[http://mmbiz.qpic.cn/x]]></PicUrl><MediaId><![CDATA[IMG_1]]></MediaId><MsgId>7000000000000000002</MsgId></xml>'],
  ['voice', hdr('oVec1', 1710000003, 'voice') + '<MediaId><![CDATA[VOC_1]]></MediaId><Format><![CDATA[amr]]></Format><Recognition><![CDATA[腾讯微信团队]]></Recognition><MsgId>7000000000000000003</MsgId></xml>'],
  ['video', hdr('oVec1', 1710000004, 'video') + '<MediaId><![CDATA[VID_1]]></MediaId><ThumbMediaId><![CDATA[TH_1]]></ThumbMediaId><MsgId>7000000000000000004</MsgId></xml>'],
  ['location', hdr('oVec1', 1710000005, 'location') + '<Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y><Scale>20</Scale><Label><![CDATA[位置信息]]></Label><MsgId>7000000000000000005</MsgId></xml>'],
  ['link', hdr('oVec1', 1710000006, 'link') + '<Title><![CDATA[公众平台官网链接]]></Title><Description><![CDATA[公众平台官网链接]]></Description><Url><![CDATA[https://mp.weixin.qq.com]]></Url><MsgId>7000000000000000006</MsgId></xml>'],
  ['subscribe', hdr('oVec1', 1710000007, 'event') + '<Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[qrscene_123123]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket></xml>'],
  ['click', hdr('oVec1', 1710000008, 'event') + '<Event><![CDATA[CLICK]]></Event><EventKey><![CDATA[EVENTKEY]]></EventKey></xml>'],
];

const out = { generator: '@wecom/crypto 1.0.1', mp: MP, vectors: [] };
M.forEach(([name, inner], i) => {
  for (const aligned of [false, true]) {
    // a message whose frame is 32-aligned needs the full 0x20 pad block
    let msg = inner;
    if (aligned) {
      const base = 20 + Buffer.byteLength(msg) + Buffer.byteLength(MP.id);
      const fill = (32 - (base % 32)) % 32;
      msg = msg.replace('</xml>', ' '.repeat(fill) + '</xml>');
      assert.strictEqual((20 + Buffer.byteLength(msg) + Buffer.byteLength(MP.id)) % 32, 0);
    }
    const random = Buffer.from(('vector-random-' + i + (aligned ? 'a' : 'b')).padEnd(16, '.').slice(0, 16));
    const enc = encrypt(MP.key, msg, MP.id, random);
    const timestamp = String(1710000100 + i);
    const nonce = String(880000 + i * 2 + (aligned ? 1 : 0));
    const d = decrypt(MP.key, enc);
    assert.strictEqual(d.message, msg);
    assert.strictEqual(d.id, MP.id);
    out.vectors.push({
      name: name + (aligned ? '-aligned' : ''), inner: msg, encrypt: enc, timestamp, nonce,
      msg_signature: getSignature(MP.token, timestamp, nonce, enc),
    });
  }
});
process.stdout.write(JSON.stringify(out, null, 1) + '\n');
