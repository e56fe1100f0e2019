// gRPC peer for tests/tests/grpc_peers.rs, written with @grpc/grpc-js (from
// npm, installed by scripts/setup into target/node-grpc; the test sets
// NODE_PATH). It speaks the protocol of tests/py/grpc_calls.py so that it
// pairs with grpcio and grpc-go peers: service calls.Calls, raw-bytes
// messages (serializers that pass Buffers through, no protobuf).
//
//   grpc_peer.js server PORT METHOD[,METHOD...]
//       serves those unary methods of calls.Calls on 127.0.0.1:PORT (grpc-js
//       has no catch-all handler, so the test names them); prints "ready"
//   grpc_peer.js client PORT
//       reads commands from stdin over ONE channel and answers each with
//       "ok STATUS":
//         unary METHOD [CONTENT]   a unary call of /calls.Calls/METHOD with
//                                  request CONTENT (default "0,1")
//         quit
//
// A method whose name starts with "NotFound" is answered NOT_FOUND; any
// other is answered "reply:METHOD". With GRPC_TLS_DIR set (a directory with
// cert.pem and key.pem, a self-signed certificate for 127.0.0.1), the server
// and the client speak TLS (grpc-js's OpenSSL, linked into node).
'use strict';
const grpc = require('@grpc/grpc-js');
const fs = require('fs');
const path = require('path');
const readline = require('readline');

const SERVICE = 'calls.Calls';
const same = (b) => b;
const TLS_DIR = process.env.GRPC_TLS_DIR;
const pem = (name) => fs.readFileSync(path.join(TLS_DIR, name));

function definition(method) {
  return {
    path: `/${SERVICE}/${method}`,
    requestStream: false,
    responseStream: false,
    requestSerialize: same,
    requestDeserialize: same,
    responseSerialize: same,
    responseDeserialize: same,
  };
}

function server(port, methods) {
  const s = new grpc.Server();
  const defs = {};
  const impls = {};
  for (const m of methods) {
    defs[m] = definition(m);
    impls[m] = (call, done) => {
      if (m.startsWith('NotFound')) {
        done({ code: grpc.status.NOT_FOUND, details: 'no such thing' });
      } else {
        done(null, Buffer.from(`reply:${m}`));
      }
    };
  }
  s.addService(defs, impls);
  const creds = TLS_DIR
    ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: pem('cert.pem'), private_key: pem('key.pem') }])
    : grpc.ServerCredentials.createInsecure();
  s.bindAsync(`127.0.0.1:${port}`, creds, (err) => {
    if (err) {
      console.error(`grpc_peer.js: ${err.message}`);
      process.exit(1);
    }
    console.log('ready');
  });
}

function client(port) {
  const creds = TLS_DIR ? grpc.credentials.createSsl(pem('cert.pem')) : grpc.credentials.createInsecure();
  const ch = new grpc.Client(`127.0.0.1:${port}`, creds);
  const codes = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));
  const lines = readline.createInterface({ input: process.stdin });
  const queue = [];
  let busy = false;
  // One call at a time, in the order of the lines.
  function next() {
    if (busy || queue.length === 0) return;
    const words = queue.shift().split(/\s+/).filter(Boolean);
    if (words.length === 0 || words[0] === 'quit') {
      ch.close();
      process.exit(0);
    }
    if (words[0] !== 'unary' || words.length < 2) {
      console.error(`grpc_peer.js: unknown command ${words.join(' ')}`);
      process.exit(1);
    }
    busy = true;
    const method = words[1];
    const req = Buffer.from(words[2] || '0,1');
    ch.makeUnaryRequest(`/${SERVICE}/${method}`, same, same, req,
      { deadline: Date.now() + 30000 }, (err, resp) => {
        if (!err && resp.toString() !== `reply:${method}`) {
          console.error(`grpc_peer.js: call ${method} answered ${resp}`);
          process.exit(1);
        }
        console.log(`ok ${err ? codes[err.code] : 'OK'}`);
        busy = false;
        next();
      });
  }
  lines.on('line', (l) => { queue.push(l); next(); });
  lines.on('close', () => { queue.push('quit'); next(); });
  console.log('ready');
}

const [role, port, methods] = process.argv.slice(2);
if (role === 'server') {
  server(port, (methods || '').split(',').filter(Boolean));
} else if (role === 'client') {
  client(port);
} else {
  console.error('usage: grpc_peer.js server PORT METHODS | client PORT');
  process.exit(2);
}
