#!/usr/bin/env bash
# Records the kernel records of real HTTP/2 traffic for the HTTP/2 golden
# replay and the replay benchmark: a grpcio client making 300 unary calls
# (a NOT_FOUND among them) on one channel to a grpcio server, and h2load and
# curl --http2-prior-knowledge against nginx serving h2c. Writes
# tests/data/grpc.rec.gz. Run as root after building
# (cargo build --profile dist -p tracer), under the e2e lock:
#   flock -o /work/e2e.lock bench/record_grpc.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=target/pyenv/bin/python
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/root" "$work/logs"
echo "hello over h2c" > "$work/root/file.txt"
OTEL_SERVICE_NAME=grpc-server $py tests/py/grpc_hello.py server 18710 > "$work/server.out" &
cat > "$work/nginx.conf" <<CONF
worker_processes 1; error_log $work/logs/error.log; pid $work/nginx.pid; daemon off; user root;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:18711 http2; root $work/root; } }
CONF
nginx -p "$work" -c "$work/nginx.conf" &
for _ in $(seq 50); do grep -q ready "$work/server.out" 2>/dev/null && break; sleep 0.2; done
./target/dist/tracer run --print none --profile-hz 0 --record "$work/grpc.rec" &
agent=$!
sleep 2
{ for i in $(seq 0 299); do
    if [ "$i" = 150 ]; then echo "call notfound-$i"; else echo "call c$i"; fi
  done; echo quit; } | OTEL_SERVICE_NAME=grpc-client $py tests/py/grpc_hello.py client 18710 > /dev/null
h2load -n 200 -c 2 -m 8 http://127.0.0.1:18711/file.txt > /dev/null
for i in 1 2; do curl -s -o /dev/null --http2-prior-knowledge http://127.0.0.1:18711/file.txt; done
sleep 1
kill -INT $agent; wait $agent || true
gzip -9 -c "$work/grpc.rec" > tests/data/grpc.rec.gz
ls -l tests/data/grpc.rec.gz
