#!/usr/bin/env bash
# Side-by-side load test: nginx, HAProxy, a bare hyper-util proxy and ipgate on this
# machine (see bench/side_by_side.py for the cases and the method).
#   bench/run.sh                      # full run: DURATION=10s ROUNDS=3 CONNS=64
#   DURATION=5s ROUNDS=1 CASES=allow bench/run.sh
#   REPORT=bench/last.md bench/run.sh # also write the tables to a file
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
# The packages start their own services on install: stop them, the bench runs its own.
service nginx stop >/dev/null 2>&1 || true
service haproxy stop >/dev/null 2>&1 || true

cargo build --release --bin ipgate --example bare_proxy
# IPGATE_BEFORE=/path/to/older/ipgate measures an older build beside this one.
exec python3 bench/side_by_side.py
