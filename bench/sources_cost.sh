#!/usr/bin/env bash
# Per-request kernel cost of each source of send/receive calls (tp_btf
# tracepoint, fexit, kprobe+kretprobe) on Debian's 6.12 kernel under
# kvm-run (the host's 6.18 allows neither fexit nor kprobes): nginx + wrk in
# the guest, the agent forced to each source in turn, bpf_stats per program
# (bench/kernel_cost.py), one round. The guest is emulated (TCG): compare
# the sources with one another, not with figures taken on the host.
#
#   sudo bench/sources_cost.sh [--seconds 5] [--connections 10]
set -euo pipefail
cd "$(dirname "$0")/.."
KVM_RUN=${KVM_RUN:-/work/shared/tools/kernel-vm/kvm-run}
cargo build --profile dist -p tracer
exe=target/dist/tracer
exec "$KVM_RUN" --kernel "${KERNEL:-6.12}" --mem 2G --timeout 900 -- \
  /usr/bin/python3 bench/kernel_cost.py --rounds 1 --seconds 5 --connections 10 \
  --variant "tracepoint=$exe:--capture-source tracepoint" \
  --variant "fentry=$exe:--capture-source fentry" \
  --variant "kprobe=$exe:--capture-source kprobe" "$@"
