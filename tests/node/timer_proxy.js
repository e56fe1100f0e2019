// An event-loop service for the parent tests (Node's plain `http` module):
//
//   node timer_proxy.js PORT BACKEND_PORT [POLL_MS]
//
// Forwards every request (method, path, Host, body) to the backend on
// 127.0.0.1:BACKEND_PORT, as a reverse proxy does, and answers with what
// it got; independently, on a
// timer every POLL_MS (default 20) on the same event loop, polls the
// backend at /poll/N, as metrics pushers, health checks and cache
// refreshers do. Prints "ready" once listening.
"use strict";
const http = require("http");

const port = Number(process.argv[2]);
const backend = Number(process.argv[3]);
const pollMs = Number(process.argv[4] || 20);
const agent = new http.Agent({ keepAlive: true });

let polls = 0;
setInterval(() => {
  const req = http.get(
    { host: "127.0.0.1", port: backend, path: `/poll/${polls++}`, agent },
    (res) => res.resume()
  );
  req.on("error", () => {});
}, pollMs);

http
  .createServer((inbound, outbound) => {
    const headers = { host: inbound.headers.host };
    if (inbound.headers["x-request-id"]) headers["x-request-id"] = inbound.headers["x-request-id"];
    const up = http.request(
      {
        host: "127.0.0.1",
        port: backend,
        method: inbound.method,
        path: inbound.url,
        headers,
        agent,
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          outbound.writeHead(res.statusCode, { "content-type": "text/plain" });
          outbound.end(Buffer.concat(chunks));
        });
      }
    );
    up.on("error", (e) => {
      outbound.writeHead(502);
      outbound.end(String(e));
    });
    inbound.pipe(up);
  })
  .listen(port, "127.0.0.1", () => console.log("ready"));
