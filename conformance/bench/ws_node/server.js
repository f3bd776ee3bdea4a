// The peer of conformance/bench/ws_bench.py: a Node.js `ws` server on
// 127.0.0.1:PORT that answers every data message with the same message
// (the gateway's echo goes through the bus and a core instead), accepts any
// subprotocol offered first, and prints "listening" once it can be reached.
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  backlog: 4096,
  clientTracking: false,       // no Set of every socket: the cheapest setup
  perMessageDeflate: false,
  handleProtocols: (protocols) => protocols.values().next().value || false,
});
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => console.log('listening'));
process.on('SIGTERM', () => process.exit(0));
