#!/usr/bin/env bash
# Records the kernel records of real traffic for the replay benchmark:
# curl -> nginx (reverse proxy) -> Python A -> Python B, 8 concurrent
# clients, plus keep-alive static files. Writes tests/data/chain.rec.gz.
# Run as root after building (cargo build --profile dist -p tracer):
# sudo bench/record_chain.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=target/pyenv/bin/python
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/root/static" "$work/logs"
for i in $(seq 0 9); do echo "static $i" > "$work/root/static/f$i"; done
OTEL_SERVICE_NAME=svc-b $py tests/py/chain_backend.py 18702 > /dev/null &
OTEL_SERVICE_NAME=svc-a $py tests/py/chain_backend.py 18701 http://127.0.0.1:18702 > /dev/null &
cat > "$work/nginx.conf" <<CONF
worker_processes 1; error_log $work/logs/error.log; pid $work/nginx.pid; daemon off; user root;
events { worker_connections 1024; }
http { access_log off;
  server { listen 127.0.0.1:18700; root $work/root;
    location /static/ { }
    location / { proxy_pass http://127.0.0.1:18701; } } }
CONF
nginx -p "$work" -c "$work/nginx.conf" &
sleep 1
./target/dist/tracer run --print none --record "$work/chain.rec" &
agent=$!
sleep 1.5
for w in $(seq 0 7); do
  ( for i in $(seq 0 49); do curl -s -o /dev/null -H "x-request-id: r-$w-$i" "http://127.0.0.1:18700/api/$w/$i?q=$i"; done ) &
done
for w in $(seq 0 3); do
  ( for i in $(seq 0 19); do curl -s -o /dev/null $(for f in $(seq 0 9); do echo "http://127.0.0.1:18700/static/f$f"; done); done ) &
done
wait $(jobs -p | grep -v "^$agent$" | tail -12) 2>/dev/null || true
sleep 1
kill -INT $agent; wait $agent || true
gzip -9 -c "$work/chain.rec" > tests/data/chain.rec.gz
ls -l tests/data/chain.rec.gz
