// Node's `https` on both sides (OpenSSL linked into node, memory BIOs):
//
//   node tls_proxy.js serve PORT CERT KEY BACKEND_PORT
//     an HTTPS server on 127.0.0.1:PORT; every request is forwarded (a new
//     keep-alive HTTPS request, same path and Host, as a reverse proxy
//     does) to https://127.0.0.1:BACKEND_PORT
//     and its status and body answered. Prints "ready" once listening.
//   node tls_proxy.js get BASE PREFIX N
//     N GET requests BASE PREFIX0..PREFIX{N-1} one after another on one
//     keep-alive connection; prints "done".
// Certificates are the test's own: checks off.
"use strict";
const fs = require("fs");
const https = require("https");

const mode = process.argv[2];
const agent = new https.Agent({ keepAlive: true, maxSockets: 1, rejectUnauthorized: false });

function get(url, host) {
  const headers = host ? { host } : {};
  return new Promise((resolve, reject) => {
    https
      .get(url, { agent, headers }, (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
      })
      .on("error", reject);
  });
}

if (mode === "serve") {
  const [port, cert, key, backend] = process.argv.slice(3);
  https
    .createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
      get(`https://127.0.0.1:${backend}${req.url}`, req.headers.host).then(
        (r) => {
          res.writeHead(r.status, { "content-type": "text/plain" });
          res.end(r.body);
        },
        (e) => {
          res.writeHead(502);
          res.end(String(e));
        }
      );
    })
    .listen(Number(port), "127.0.0.1", () => console.log("ready"));
} else if (mode === "get") {
  const [base, prefix, n] = process.argv.slice(3);
  (async () => {
    for (let i = 0; i < Number(n); i++) {
      const r = await get(`${base}${prefix}${i}`);
      if (r.status !== 200) throw new Error(`status ${r.status}`);
    }
    agent.destroy();
    console.log("done");
  })().catch((e) => {
    console.error(e);
    process.exit(1);
  });
} else {
  console.error("usage: tls_proxy.js serve PORT CERT KEY BACKEND_PORT | get BASE PREFIX N");
  process.exit(2);
}
