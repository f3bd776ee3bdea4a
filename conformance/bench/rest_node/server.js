// The Node.js peer of conformance/bench/rest_bench.py: what a small ingest
// service does per request, without a journal: check the bearer key
// (constant time), parse the JSON body, validate the few fields of a
// single message, build the envelope, msgpack-encode it, answer 202 with
// an id. One process, one thread (pinned by the bench).
//
//   node server.js PORT KEY
'use strict';
const http = require('node:http');
const crypto = require('node:crypto');
const { encode } = require('@msgpack/msgpack');

const port = Number(process.argv[2]);
const key = Buffer.from('Bearer ' + (process.argv[3] || ''));
let seq = 0;
let encodedBytes = 0;

function problem(res, status, detail, pointer) {
  const body = JSON.stringify({ type: 'about:blank', status, title: http.STATUS_CODES[status],
                                detail, errors: pointer ? [{ pointer }] : undefined });
  res.writeHead(status, { 'Content-Type': 'application/problem+json' });
  res.end(body);
}

function ident(v, ptr) {
  if (typeof v === 'string' && v.length > 0 && v.length <= 256) return { id: v };
  if (v && typeof v === 'object' && typeof v.id === 'string' && v.id.length > 0) {
    const o = { id: v.id };
    if (typeof v.name === 'string') o.name = v.name;
    return o;
  }
  throw ptr;
}

function handle(req, res, raw) {
  const auth = Buffer.from(req.headers.authorization || '');
  if (auth.length !== key.length || !crypto.timingSafeEqual(auth, key))
    return problem(res, 401, 'missing or unknown API key');
  if (!/^application\/json/i.test(req.headers['content-type'] || ''))
    return problem(res, 415, 'send application/json');
  let m;
  try {
    m = JSON.parse(raw);
  } catch (e) {
    return problem(res, 400, 'malformed JSON');
  }
  if (!m || typeof m !== 'object' || Array.isArray(m)) return problem(res, 400, 'not an object', '');
  let conversation, sender;
  try {
    conversation = ident(m.conversation, '/conversation');
    sender = ident(m.sender, '/sender');
    if (typeof m.text !== 'string' || m.text.length === 0 || m.text.length > 65536) throw '/text';
  } catch (ptr) {
    return problem(res, 400, 'invalid field', ptr);
  }
  const id = crypto.randomUUID();
  const env = { v: 1, id, tenant: 'bench', channel: 'rest', instance: 'bench', dir: 'in',
                type: 'message', conversation, sender,
                parts: [{ kind: 'text', text: m.text }], channel_msg_id: id,
                ts: { accepted: Date.now() } };
  encodedBytes += encode(env).length;
  const body = JSON.stringify({ id, seq: ++seq, status: 'accepted' });
  res.writeHead(202, { 'Content-Type': 'application/json', 'Location': '/api/bench/messages/' + id });
  res.end(body);
}

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/api/bench/messages') return problem(res, 404, 'no such resource');
  const chunks = [];
  let n = 0;
  req.on('data', (c) => {
    n += c.length;
    if (n > 1048576) { problem(res, 413, 'too large'); req.destroy(); return; }
    chunks.push(c);
  });
  req.on('end', () => { if (!res.headersSent) handle(req, res, Buffer.concat(chunks).toString('utf8')); });
});
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => {
  process.stderr.write(`encoded ${encodedBytes} bytes for ${seq} messages\n`);
  process.exit(0);
});
