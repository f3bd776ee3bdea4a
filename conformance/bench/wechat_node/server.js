// The Node.js peer of conformance/bench/wechat_bench.py: what a small
// WeChat callback service does per safe-mode POST, without a journal:
// read the query, check msg_signature over the <Encrypt> of the body
// (constant time), decrypt it with @wecom/crypto, check the AppID, parse
// the inner XML with fast-xml-parser (no entity processing), build the
// envelope, msgpack-encode it, answer "success". One process, one thread
// (pinned by the bench).
//
//   node server.js PORT TOKEN ENCODING_AES_KEY APPID
'use strict';
const http = require('node:http');
const crypto = require('node:crypto');
const { getSignature, decrypt } = require('@wecom/crypto');
const { XMLParser } = require('fast-xml-parser');
const { encode } = require('@msgpack/msgpack');

const [port, token, aesKey, appid] = [Number(process.argv[2]), process.argv[3],
                                      process.argv[4], process.argv[5]];
// Values as text (MsgId exceeds 2^53), CDATA folded in, no entities.
const parser = new XMLParser({ parseTagValue: false, processEntities: false,
                               ignoreDeclaration: true, trimValues: false });
let seq = 0;
let encodedBytes = 0;

function fail(res, status) {
  res.writeHead(status, { 'Content-Type': 'text/plain' });
  res.end();
}

function handle(req, res, raw) {
  const u = new URL(req.url, 'http://x');
  const q = u.searchParams;      // POST values are hex and digits: no '+' to lose
  const ts = q.get('timestamp') || '', nonce = q.get('nonce') || '';
  const msig = q.get('msg_signature') || '';
  if (raw.includes('<!DOCTYPE') || raw.includes('<!doctype')) return fail(res, 400);
  let outer;
  try {
    outer = parser.parse(raw).xml;
  } catch (e) {
    return fail(res, 400);
  }
  const enc = outer && outer.Encrypt;
  if (typeof enc !== 'string' || !enc) return fail(res, 400);
  const want = Buffer.from(getSignature(token, ts, nonce, enc));
  const got = Buffer.from(msig);
  if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) return fail(res, 403);
  let d;
  try {
    d = decrypt(aesKey, enc);
  } catch (e) {
    return fail(res, 400);
  }
  if (d.id !== appid) return fail(res, 400);
  let x;
  try {
    x = parser.parse(d.message).xml;
  } catch (e) {
    return fail(res, 400);
  }
  if (!x || !x.MsgType || !x.FromUserName) return fail(res, 400);
  const now = Date.now();
  const env = {
    v: 1, id: crypto.randomUUID(), seq: ++seq, type: 'message', dir: 'in', tenant: 'acme',
    channel: 'wechat', instance: 'wx-bench',
    ts: { accepted: now, channel: Number(x.CreateTime) * 1000 },
    conversation: { id: x.FromUserName, type: 'direct' },
    sender: { id: x.FromUserName, role: 'customer' },
    recipient: { id: x.ToUserName },
    channel_msg_id: x.MsgId, idem: x.MsgId,
    channel_data: { msg_type: x.MsgType },
    parts: x.MsgType === 'text' ? [{ kind: 'text', text: x.Content }] : [],
  };
  encodedBytes += encode(env).length;
  res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.end('success');
}

const server = http.createServer((req, res) => {
  if (req.method !== 'POST') return fail(res, 405);
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > 262144) req.destroy();
    else chunks.push(c);
  });
  req.on('end', () => handle(req, res, Buffer.concat(chunks).toString('utf8')));
});
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
