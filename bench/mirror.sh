#!/usr/bin/env bash
# route-mirror benchmark. Run as root from anywhere:  bench/mirror.sh
#
# Everything happens inside a throwaway network namespace with the topology of
# shared/routes/netns.sh; the host's routes, links and addresses are untouched.
#
# Steps:
#   1. build the release binary (cargo xtask build --release)
#   2. floor: load the route sets into a namespace, time
#      `ip -n NS -j route show table all` for IPv4 and IPv6
#   3. fresh namespace, start the daemon, wait until synced, load the route
#      sets while it runs: kernel load rate, daemon event rate, time until
#      `diff` reports mirror == kernel
#   4. restart the daemon on the full table: initial sync time, RSS (VmRSS)
#   5. print a markdown table (also saved to bench/out/)
#
# Environment:
#   BENCH_V4 / BENCH_V6     route sets to load (default v4-1m / v6-230k;
#                           e.g. BENCH_V4=v4-100k for a quick run; "" skips)
#   BENCH_TIMEOUT           seconds to wait for sync / catch-up (default 900)
#   BENCH_DAEMON_ARGS       extra `route-mirror run` arguments (e.g. "--source netlink")
#   ROUTE_MIRROR_SHARED     the shared/ data directory (default <repo>/../shared)
#   ROUTE_MIRROR_BIN        use this daemon binary instead of building one
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

BENCH_V4=${BENCH_V4-v4-1m}
BENCH_V6=${BENCH_V6-v6-230k}

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

SETS=()
for s in "$BENCH_V4" "$BENCH_V6"; do
    [ -n "$s" ] || continue
    [ -f "$ROUTES/$s.batch.gz" ] || die "$ROUTES/$s.batch.gz not found"
    SETS+=("$s")
done
[ "${#SETS[@]}" -gt 0 ] || die "nothing to load (BENCH_V4 and BENCH_V6 empty)"

floor_dump() {  # floor_dump FAMILY -> seconds for one full JSON dump
    local t0
    t0=$(now)
    ip -n "$NS" -j "-$1" route show table all >/dev/null
    elapsed "$t0" "$(now)"
}

# --- 1. build ----------------------------------------------------------------
build_bin

N_ROUTES=0
for s in "${SETS[@]}"; do
    N_ROUTES=$((N_ROUTES + $(zcat "$ROUTES/$s.batch.gz" | grep -c .)))
done
log "route sets: ${SETS[*]} ($N_ROUTES routes)"

# --- 2. floor: kernel dump time ----------------------------------------------
NS=$(ns_new_name)
ns_create "$NS" || die "cannot create namespace $NS"
log "floor: loading into $NS"
for s in "${SETS[@]}"; do
    load_batch "$NS" "$ROUTES/$s.batch.gz" >/dev/null || die "loading $s failed"
done
FLOOR4=$(floor_dump 4)
FLOOR6=$(floor_dump 6)
ns_delete "$NS"
NS=""

# --- 3. live load while the daemon runs --------------------------------------
NS=$(ns_new_name)
ns_create "$NS" || die "cannot create namespace $NS"
log "starting daemon in $NS (log: $WORK/daemon.log)"
start_daemon
SYNC_EMPTY=$(wait_synced)
BASE_TOTAL=$(routes_total)
BASE_TOTAL=${BASE_TOTAL:-0}
TARGET=$((BASE_TOTAL + N_ROUTES))

log "loading ${SETS[*]} while the daemon runs"
T_LOAD0=$(now)
for s in "${SETS[@]}"; do
    load_batch "$NS" "$ROUTES/$s.batch.gz" >/dev/null || die "loading $s failed"
done
T_LOAD1=$(now)
LOAD_S=$(elapsed "$T_LOAD0" "$T_LOAD1")

# catch-up: stats routes_total reaches the loaded count
deadline=$((SECONDS + BENCH_TIMEOUT))
CATCHUP_S=timeout
while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$DAEMON_PID" 2>/dev/null || die "daemon exited during the load"
    tot=$(routes_total)
    if [ -n "$tot" ] && [ "$tot" -ge "$TARGET" ]; then
        CATCHUP_S=$(elapsed "$T_LOAD0" "$(now)")
        break
    fi
    sleep 0.05
done
if [ "$CATCHUP_S" = timeout ]; then
    EVENTS_PER_S="n/a (routes_total $(routes_total) < $TARGET after ${BENCH_TIMEOUT}s)"
else
    EVENTS_PER_S=$(ratio "$N_ROUTES" "$CATCHUP_S")
fi

# time until diff is empty (diff includes a barrier)
DIFF_S=timeout
deadline=$((SECONDS + BENCH_TIMEOUT))
T_DIFF0=$(now)
while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$DAEMON_PID" 2>/dev/null || die "daemon exited before diff was empty"
    rc=0
    cli diff >"$WORK/diff.out" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        DIFF_S=$(elapsed "$T_DIFF0" "$(now)")
        break
    fi
    [ "$rc" -eq 1 ] || die "diff failed (exit $rc): $(tail -n 5 "$WORK/diff.out")"
    sleep 0.2
done
DIFF_FROM_LOAD_S=n/a
[ "$DIFF_S" = timeout ] || DIFF_FROM_LOAD_S=$(elapsed "$T_LOAD0" "$(now)")
RSS_LIVE=$(rss_kib)
STATS_LIVE=$(cli stats --json 2>/dev/null || echo '{}')
ENOBUFS=$(echo "$STATS_LIVE" | json_get enobufs)
RESYNCS=$(echo "$STATS_LIVE" | json_get resyncs)

# --- 4. restart on the full table --------------------------------------------
log "restarting daemon on the full table"
stop_daemon
start_daemon
SYNC_FULL=$(wait_synced)
FULL_TOTAL=$(routes_total)
sleep 1
RSS_FULL=$(rss_kib)
stop_daemon

# --- 5. report ---------------------------------------------------------------
REPORT=$OUT/mirror-$(date +%Y%m%d-%H%M%S).md
{
    echo "## route-mirror benchmark"
    echo
    echo "$(uname -sr), $(nproc) CPUs, $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), sets: ${SETS[*]}, daemon args: ${BENCH_DAEMON_ARGS:-(none)}"
    echo
    echo "| metric | value |"
    echo "|---|---|"
    echo "| routes loaded | $N_ROUTES |"
    echo "| floor: \`ip -j -4 route show table all\` | ${FLOOR4} s |"
    echo "| floor: \`ip -j -6 route show table all\` | ${FLOOR6} s |"
    echo "| initial sync, empty namespace | ${SYNC_EMPTY} s |"
    echo "| kernel load time (ip -batch) | ${LOAD_S} s ($(ratio "$N_ROUTES" "$LOAD_S") routes/s) |"
    echo "| daemon catch-up from load start | ${CATCHUP_S} s |"
    echo "| daemon events/s | ${EVENTS_PER_S} |"
    echo "| \`diff\` empty after load end | ${DIFF_S} s |"
    echo "| \`diff\` empty from load start | ${DIFF_FROM_LOAD_S} s |"
    echo "| enobufs / resyncs during load | ${ENOBUFS:-?} / ${RESYNCS:-?} |"
    echo "| RSS after live load (VmRSS) | ${RSS_LIVE:-?} KiB |"
    echo "| initial sync, full table | ${SYNC_FULL} s |"
    echo "| routes_total after full sync | ${FULL_TOTAL:-?} |"
    echo "| RSS after full sync (VmRSS) | ${RSS_FULL:-?} KiB |"
} | tee "$REPORT"
log "report saved to $REPORT"
