#!/usr/bin/env bash
# route-mirror churn soak, bench variant. Run as root:  bench/soak.sh
#
# Runs tests/tests/soak.rs `soak_long` against the release daemon: a churn storm
# (adds/deletes/replaces over tables main/100/1000/4000, blackhole/unreachable/
# prohibit, multipath, nexthop objects, IPv4+IPv6, link flaps, address removal,
# `route flush table 100`) with faults (tiny receive buffer, SIGSTOP/SIGCONT,
# kill -9 + restart, mid-storm scans), a sync+diff checkpoint after every round,
# then SOAK_1M_CYCLES load/flush cycles of the 1M-route set with RSS after each.
# Everything happens in a throwaway network namespace; the host is untouched.
#
# Environment: SOAK_ROUNDS (default 24), SOAK_OPS (20000 per round),
# SOAK_1M_CYCLES (3), ROUTE_MIRROR_BIN (default: build the release binary).
# Output: the markdown table on stdout, also saved to bench/out/soak-<date>.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
[ "$(id -u)" -eq 0 ] || { echo "soak: must run as root (network namespaces)" >&2; exit 1; }

export SOAK_ROUNDS=${SOAK_ROUNDS:-24}
export SOAK_OPS=${SOAK_OPS:-20000}
export SOAK_1M_CYCLES=${SOAK_1M_CYCLES:-3}
if [ -z "${ROUTE_MIRROR_BIN:-}" ]; then
    cargo build --release -p route-mirror >&2
    ROUTE_MIRROR_BIN=$REPO/target/${CARGO_TARGET_DIR:+../$CARGO_TARGET_DIR/}release/route-mirror
    [ -x "$ROUTE_MIRROR_BIN" ] || ROUTE_MIRROR_BIN=$REPO/target/release/route-mirror
fi
export ROUTE_MIRROR_BIN

mkdir -p bench/out
out=bench/out/soak-$(date +%Y%m%d-%H%M%S).md
start=$(date +%s)
{
    echo "command: SOAK_ROUNDS=$SOAK_ROUNDS SOAK_OPS=$SOAK_OPS SOAK_1M_CYCLES=$SOAK_1M_CYCLES bench/soak.sh"
    echo "kernel: $(uname -r), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
    cargo test --release -p route-mirror-tests --test soak soak_long -- \
        --ignored --nocapture --test-threads=1 2>&1 |
        grep -E -A3 '^\||^round|^1M cycle|panicked|test result'
    echo "wall time: $(( $(date +%s) - start )) s"
} | tee "$out"
grep -q 'test result: ok' "$out"
