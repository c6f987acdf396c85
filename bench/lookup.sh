#!/usr/bin/env bash
# Lookups through the daemon, as clients see them. Run as root:  bench/lookup.sh
#
# In a throwaway namespace (shared/routes/netns.sh topology), with the daemon running:
#   1. single-lookup latency (connect, request, reply) while the route sets are
#      loaded as one burst (`ip -batch`, 1M IPv4 + 230k IPv6 by default), and again
#      on the quiet full table; with how many lookups the snapshot answered
#   2. batch lookups: BENCH_BATCH random IPv4 addresses (Python random.seed(1),
#      first octet 1-223) through `route-mirror lookup --batch FILE` in each output
#      format, output to a file in /tmp and to /dev/null; wall time and addresses/s
# Prints a markdown table (also saved to bench/out/).
#
# Environment: BENCH_V4 / BENCH_V6 (default v4-1m / v6-230k), BENCH_BATCH (default
# 5000000), BENCH_PROBE_INTERVAL_US (pause between single lookups, default 1000),
# BENCH_QUIET_S (quiet probe length, default 10), BENCH_DAEMON_ARGS, ROUTE_MIRROR_BIN,
# ROUTE_MIRROR_SHARED, BENCH_TIMEOUT.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
BENCH_V4=${BENCH_V4-v4-1m}
BENCH_V6=${BENCH_V6-v6-230k}
BENCH_BATCH=${BENCH_BATCH:-5000000}
BENCH_PROBE_INTERVAL_US=${BENCH_PROBE_INTERVAL_US:-1000}
BENCH_QUIET_S=${BENCH_QUIET_S:-10}

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

# Addresses the probe cycles through: inside the loaded sets, in the host routes of
# the topology, and nowhere (default route or none).
PROBE_ADDRS=(1.0.4.1 8.8.8.8 93.184.216.34 185.1.1.1 198.18.1.2 203.0.113.9
    2001:2:0:1::2 2a00:1450::1 2001:db8::1)

fast_counts() {  # -> "fast exact" lookups so far
    cli stats --json 2>/dev/null | python3 -c '
import json, sys
f = json.load(sys.stdin).get("fast_lookup", {})
print(f.get("fast_lookups", 0), f.get("exact_lookups", 0))'
}

# probe_start -> starts the latency probe in the background (PROBE_PID, PROBE_OUT)
probe_start() {
    PROBE_OUT=$WORK/probe-$1.json
    rm -f "$WORK/stop"
    "$BIN" --socket "$SOCK" debug lookup-latency "${PROBE_ADDRS[@]}" \
        --stop-file "$WORK/stop" --interval-us "$BENCH_PROBE_INTERVAL_US" >"$PROBE_OUT" &
    PROBE_PID=$!
}

probe_stop() {
    touch "$WORK/stop"
    wait "$PROBE_PID" || die "latency probe failed"
}

# row LABEL FAST0 FAST1 -> one markdown row from PROBE_OUT
row() {
    python3 - "$1" "$PROBE_OUT" "$2" "$3" <<'EOF'
import json, sys
label, path, f0, f1 = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
v = json.load(open(path))
fast, exact = int(f1[0]) - int(f0[0]), int(f1[1]) - int(f0[1])
print(f"| {label} | {v['lookups']:,} | {v['errors']} | {v['p50_us']:.0f} | {v['p90_us']:.0f} "
      f"| {v['p99_us']:.0f} | {v['p999_us']:.0f} | {v['max_us']:.0f} | {fast:,} / {exact:,} |")
EOF
}

build_bin
NS=$(ns_new_name)
ns_create "$NS" || die "cannot create namespace $NS"
start_daemon
wait_synced >/dev/null

# --- 1. latency during the burst, then quiet --------------------------------------
log "single lookups while loading ${BENCH_V4:-} ${BENCH_V6:-}"
N_ROUTES=0
F0=$(fast_counts)
probe_start burst
T0=$(now)
for s in $BENCH_V4 $BENCH_V6; do
    f=$ROUTES/$s.batch.gz
    [ -f "$f" ] || die "$f not found"
    N_ROUTES=$((N_ROUTES + $(zcat "$f" | grep -c .)))
    load_batch "$NS" "$f" >/dev/null || die "loading $s failed"
done
# The burst ends when the mirror has applied it all.
deadline=$((SECONDS + BENCH_TIMEOUT))
until [ "$(routes_total)" -ge "$N_ROUTES" ] 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || die "mirror did not catch up"
    sleep 0.05
done
BURST_S=$(elapsed "$T0" "$(now)")
probe_stop
F1=$(fast_counts)
ROW_BURST=$(row "during the burst (${BURST_S} s, $N_ROUTES routes)" "$F0" "$F1")

sleep 1
log "single lookups on the quiet table (${BENCH_QUIET_S} s)"
F0=$(fast_counts)
probe_start quiet
sleep "$BENCH_QUIET_S"
probe_stop
F1=$(fast_counts)
ROW_QUIET=$(row "quiet full table" "$F0" "$F1")

# --- 2. batch lookups --------------------------------------------------------------
log "generating $BENCH_BATCH addresses"
python3 - "$BENCH_BATCH" >"$WORK/addrs" <<'EOF'
import random, sys
random.seed(1)
r = random.randrange
out = sys.stdout
for _ in range(int(sys.argv[1])):
    out.write(f"{r(1, 224)}.{r(256)}.{r(256)}.{r(256)}\n")
EOF
sync
sleep 5
BATCH_ROWS=()
for fmt in text csv json; do
    flag=()
    [ "$fmt" = text ] || flag=(--"$fmt")
    # /dev/null first: writing a file leaves dirty pages whose writeback slows
    # whatever runs next on this machine. One untimed run first: the first pass over
    # a freshly written input file ran up to 3x slower here (page cache state).
    cli lookup --batch "$WORK/addrs" "${flag[@]}" >/dev/null || die "batch lookup ($fmt) failed"
    T0=$(now)
    cli lookup --batch "$WORK/addrs" "${flag[@]}" >/dev/null || die "batch lookup ($fmt) failed"
    SN=$(elapsed "$T0" "$(now)")
    sync
    T0=$(now)
    cli lookup --batch "$WORK/addrs" "${flag[@]}" >"$WORK/out" || die "batch lookup ($fmt) failed"
    S=$(elapsed "$T0" "$(now)")
    LINES=$(wc -l <"$WORK/out")
    BYTES=$(stat -c %s "$WORK/out")
    rm -f "$WORK/out"
    sync
    BATCH_ROWS+=("| $fmt | $BENCH_BATCH | $LINES | $((BYTES / 1000000)) MB | $S s | $(ratio "$BENCH_BATCH" "$S") | $SN s | $(ratio "$BENCH_BATCH" "$SN") |")
done
stop_daemon

REPORT=$OUT/lookup-$(date +%Y%m%d-%H%M%S).md
{
    echo "## route-mirror lookups through the control socket"
    echo
    echo "$(uname -sr), $(nproc) CPUs, $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), sets: $BENCH_V4 $BENCH_V6, daemon args: ${BENCH_DAEMON_ARGS:-(none)}"
    echo
    echo "Single lookups, one connection each, ${BENCH_PROBE_INTERVAL_US} µs apart (µs):"
    echo
    echo "| when | lookups | errors | p50 | p90 | p99 | p99.9 | max | snapshot / exact |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "$ROW_BURST"
    echo "$ROW_QUIET"
    echo
    echo "Batch lookups (\`lookup --batch FILE\`, output to /dev/null, then to a file in /tmp):"
    echo
    echo "| format | addresses | output lines | output | to file | addresses/s | to /dev/null | addresses/s |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${BATCH_ROWS[@]}"
} | tee "$REPORT"
log "report saved to $REPORT"
