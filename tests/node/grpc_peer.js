// gRPC peer for the end-to-end tests, written with @grpc/grpc-js (from npm,
// installed by scripts/setup into target/node-grpc; the test sets
// NODE_PATH; its HTTP/2 is Node's nghttp2, which sends `:path` as a literal
// every time). It speaks the protocol of tests/py/grpc_calls.py, so that it
// pairs with the grpcio, grpc-go and tonic peers: service calls.Calls,
// raw-bytes messages (serializers that pass Buffers through, no protobuf).
//
//   grpc_peer.js server PORT METHOD[,METHOD...]
//       serves those unary methods of calls.Calls on 127.0.0.1:PORT, and the
//       streaming ServerStream, ClientStream and Bidi (grpc-js has no
//       catch-all handler, so the test names the unary ones); prints "ready"
//   grpc_peer.js client PORT
//       reads commands from stdin, one a line, over ONE channel and answers
//       each with "ok STATUS[ STATUS...]" when done:
//         unary METHOD [TIMEOUT_MS [SLEEP_MS]]   a unary call
//         unary METHOD CONTENT                   a unary call with request CONTENT
//         sstream N | cstream N | bidi N | many N | traced TRACEPARENT
//         quit
//
// The commands, the requests ("SLEEP_MS,REPLIES[,BYTES,padding]") and the
// server's answers (NotFound* is NOT_FOUND, Sleep sleeps, "reply:METHOD"
// and BYTES more) are grpc_calls.py's; status names are grpcio's (grpc-js
// uses the same). A reply that is not the one the request asked for ends
// the client with an error. With GRPC_TLS_DIR set (a directory with
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
// A call's deadline when the command gives none (grpc_calls.py's).
const DEFAULT_TIMEOUT_MS = 30000;
const codes = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

function fail(why) {
  console.error(`grpc_peer.js: ${why}`);
  process.exit(1);
}

// What a request asks for; empty is one reply at once.
function parse(req) {
  if (req.length === 0) return { sleep: 0, replies: 1, size: 0 };
  const fields = req.toString('latin1').split(',', 3);
  const n = fields.map((f) => (/^[0-9]+$/.test(f) ? Number(f) : NaN));
  if (fields.length < 2 || n.some(Number.isNaN)) return null;
  return { sleep: n[0], replies: n[1], size: n[2] || 0 };
}

const replyOf = (method, size) => Buffer.concat([Buffer.from(`reply:${method}`), Buffer.alloc(size, 'x')]);
const badRequest = { code: grpc.status.INVALID_ARGUMENT, details: 'request is not SLEEP_MS,REPLIES[,BYTES,...]' };

// ---- server ----

function definition(method, requestStream, responseStream) {
  return {
    path: `/${SERVICE}/${method}`,
    requestStream,
    responseStream,
    requestSerialize: same,
    requestDeserialize: same,
    responseSerialize: same,
    responseDeserialize: same,
  };
}

function unary(method) {
  return (call, done) => {
    if (method.startsWith('NotFound')) {
      done({ code: grpc.status.NOT_FOUND, details: 'no such thing' });
      return;
    }
    const r = parse(call.request);
    if (!r) {
      done(badRequest);
      return;
    }
    // grpc-js answers an expired deadline itself (DEADLINE_EXCEEDED); a
    // late reply is then dropped.
    setTimeout(() => done(null, replyOf(method, r.size)), r.sleep);
  };
}

const streaming = {
  ServerStream: [false, true, (call) => {
    const r = parse(call.request);
    if (!r) {
      call.emit('error', badRequest);
      return;
    }
    for (let i = 0; i < r.replies; i++) call.write(Buffer.from(`part${i}`));
    call.end();
  }],
  ClientStream: [true, false, (call, done) => {
    let n = 0;
    call.on('data', () => { n += 1; });
    call.on('end', () => done(null, Buffer.from(`got${n}`)));
  }],
  Bidi: [true, true, (call) => {
    call.on('data', (m) => call.write(Buffer.concat([Buffer.from('echo:'), m])));
    call.on('end', () => call.end());
  }],
};

function server(port, methods) {
  const s = new grpc.Server();
  const defs = {};
  const impls = {};
  for (const m of methods) {
    defs[m] = definition(m, false, false);
    impls[m] = unary(m);
  }
  for (const [m, [requestStream, responseStream, impl]] of Object.entries(streaming)) {
    defs[m] = definition(m, requestStream, responseStream);
    impls[m] = impl;
  }
  s.addService(defs, impls);
  const creds = TLS_DIR
    ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: pem('cert.pem'), private_key: pem('key.pem') }])
    : grpc.ServerCredentials.createInsecure();
  s.bindAsync(`127.0.0.1:${port}`, creds, (err) => {
    if (err) fail(err.message);
    console.log('ready');
  });
}

// ---- client ----

const callPath = (method) => `/${SERVICE}/${method}`;
const options = (timeoutMs) => ({ deadline: Date.now() + timeoutMs });

// A unary call of `method`; calls back with its status name once done.
function unaryCall(ch, method, req, metadata, timeoutMs, done) {
  const r = parse(req);
  ch.makeUnaryRequest(callPath(method), same, same, req, metadata, options(timeoutMs), (err, resp) => {
    if (!err && r && !resp.equals(replyOf(method, r.size))) {
      fail(`call ${method} answered ${resp.subarray(0, 64)} (${resp.length} bytes)`);
    }
    done(err ? codes[err.code] : 'OK');
  });
}

// Counts the replies of a streaming call; calls back with its status name
// and the count once both its messages and its status are in.
function counted(call, done) {
  let n = 0;
  let status = null;
  let ended = false;
  const settle = () => {
    if (status !== null && ended) done(codes[status.code], n);
  };
  call.on('data', () => { n += 1; });
  // An error status is emitted as 'error' instead of an end of the data.
  call.on('error', () => { ended = true; settle(); });
  call.on('end', () => { ended = true; settle(); });
  call.on('status', (s) => { status = s; settle(); });
}

// Runs one command; calls back with what follows "ok ".
function run(ch, words, done) {
  const [cmd, ...args] = words;
  const num = (i) => {
    if (!/^[0-9]+$/.test(args[i] || '')) fail(`${cmd}: argument ${i + 1} is not a number`);
    return Number(args[i]);
  };
  const none = new grpc.Metadata();
  switch (cmd) {
    case 'unary': {
      if (!args[0]) fail('unary: no method');
      // A number after the method is a timeout; anything else is the
      // request's content.
      if (/^[0-9]+$/.test(args[1] || '')) {
        const sleep = args.length > 2 ? num(2) : 0;
        unaryCall(ch, args[0], Buffer.from(`${sleep},1`), none, num(1), done);
      } else {
        unaryCall(ch, args[0], Buffer.from(args[1] || '0,1'), none, DEFAULT_TIMEOUT_MS, done);
      }
      return;
    }
    case 'traced': {
      if (!args[0]) fail('traced: no traceparent');
      const md = new grpc.Metadata();
      md.set('traceparent', args[0]);
      unaryCall(ch, 'Traced', Buffer.alloc(0), md, DEFAULT_TIMEOUT_MS, done);
      return;
    }
    case 'sstream': {
      const n = num(0);
      const call = ch.makeServerStreamRequest(callPath('ServerStream'), same, same,
        Buffer.from(`0,${n}`), none, options(DEFAULT_TIMEOUT_MS));
      counted(call, (status, got) => {
        if (status === 'OK' && got !== n) fail(`sstream ${n}: ${got} replies`);
        done(status);
      });
      return;
    }
    case 'cstream': {
      const call = ch.makeClientStreamRequest(callPath('ClientStream'), same, same, none,
        options(DEFAULT_TIMEOUT_MS), (err) => done(err ? codes[err.code] : 'OK'));
      for (let i = 0; i < num(0); i++) call.write(Buffer.from('m'));
      call.end();
      return;
    }
    case 'bidi': {
      const n = num(0);
      const call = ch.makeBidiStreamRequest(callPath('Bidi'), same, same, none, options(DEFAULT_TIMEOUT_MS));
      counted(call, (status, got) => {
        if (status === 'OK' && got !== n) fail(`bidi ${n}: ${got} replies`);
        done(status);
      });
      for (let i = 0; i < n; i++) call.write(Buffer.from(`m${i}`));
      call.end();
      return;
    }
    case 'many': {
      // All calls are started before any answers: they are multiplexed on
      // the channel's one connection.
      const n = num(0);
      const names = new Array(n);
      let left = n;
      for (let i = 0; i < n; i++) {
        unaryCall(ch, `M${i}`, Buffer.from('20,1'), none, 60000, (status) => {
          names[i] = status;
          left -= 1;
          if (left === 0) done(names.join(' '));
        });
      }
      return;
    }
    default:
      fail(`unknown command ${words.join(' ')}`);
  }
}

function client(port) {
  const creds = TLS_DIR ? grpc.credentials.createSsl(pem('cert.pem')) : grpc.credentials.createInsecure();
  const ch = new grpc.Client(`127.0.0.1:${port}`, creds);
  const lines = readline.createInterface({ input: process.stdin });
  const queue = [];
  let busy = false;
  // One command at a time, in the order of the lines.
  function next() {
    if (busy || queue.length === 0) return;
    const words = queue.shift().split(/\s+/).filter(Boolean);
    if (words.length === 0 || words[0] === 'quit') {
      ch.close();
      process.exit(0);
    }
    busy = true;
    run(ch, words, (answer) => {
      console.log(`ok ${answer}`);
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
