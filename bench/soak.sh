#!/usr/bin/env bash
# Soak: 10 minutes (or $1 seconds) of mixed traffic through the release ipgate binary,
# sampling its RSS and open descriptors every 10 s (see examples/soak.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin ipgate --example soak
ulimit -n 65536 2>/dev/null || true
exec target/release/examples/soak "${1:-600}"
