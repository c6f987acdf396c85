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
BENCH_TIMEOUT=${BENCH_TIMEOUT:-900}
read -r -a DAEMON_ARGS <<<"${BENCH_DAEMON_ARGS:-}"

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces)"
command -v ip >/dev/null || die "ip (iproute2) not found"
command -v python3 >/dev/null || die "python3 not found (used for timing and JSON)"

# --- shared data -------------------------------------------------------------
find_shared() {
    if [ -n "${ROUTE_MIRROR_SHARED:-}" ]; then
        echo "$ROUTE_MIRROR_SHARED"
        return
    fi
    local d=$REPO/..
    # <repo>/../shared, else the nearest shared/routes further up (git worktrees)
    while :; do
        if [ -d "$d/shared/routes" ]; then
            (cd "$d/shared" && pwd)
            return
        fi
        [ "$(cd "$d" && pwd)" = / ] && break
        d=$d/..
    done
    echo "$REPO/../shared"
}
SHARED=$(find_shared)
ROUTES=$SHARED/routes
[ -f "$ROUTES/netns.sh" ] || die "$ROUTES/netns.sh not found (set ROUTE_MIRROR_SHARED)"
# shellcheck source=/dev/null
. "$ROUTES/netns.sh"

SETS=()
for s in "$BENCH_V4" "$BENCH_V6"; do
    [ -n "$s" ] || continue
    [ -f "$ROUTES/$s.batch.gz" ] || die "$ROUTES/$s.batch.gz not found"
    SETS+=("$s")
done
[ "${#SETS[@]}" -gt 0 ] || die "nothing to load (BENCH_V4 and BENCH_V6 empty)"

# --- state and cleanup -------------------------------------------------------
OUT=$REPO/bench/out
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/route-mirror-bench.XXXXXX)
SOCK=$WORK/rm.sock
NS=""
DAEMON_PID=""

stop_daemon() {
    [ -n "$DAEMON_PID" ] || return 0
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true

        for _ in $(seq 20); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=""
}

cleanup() {
    local rc=$?
    stop_daemon
    [ -n "$NS" ] && ns_delete "$NS"
    if [ "$rc" -ne 0 ] && [ -f "$WORK/daemon.log" ]; then
        echo "--- daemon log tail ($WORK/daemon.log) ---" >&2
        tail -n 30 "$WORK/daemon.log" >&2 || true
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers -----------------------------------------------------------------
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; d=float(sys.argv[2]); print(f'{float(sys.argv[1]) / d:,.0f}' if d > 0 else 'n/a')" "$1" "$2"; }

# json_get KEY  <json on stdin>  -> value (empty if missing)
json_get() {
    python3 -c '
import json, sys
try:
    v = json.load(sys.stdin).get(sys.argv[1])
except Exception:
    v = None
print("" if v is None else (str(v).lower() if isinstance(v, bool) else v))' "$1"
}

cli() { "$BIN" "$@" --socket "$SOCK"; }

start_daemon() {
    rm -f "$SOCK"
    "$BIN" --config /dev/null run --netns "$NS" --socket "$SOCK" "${DAEMON_ARGS[@]}" >>"$WORK/daemon.log" 2>&1 &
    DAEMON_PID=$!
}

# wait_synced  -> prints seconds from now until stats reports synced
wait_synced() {
    local t0 deadline
    t0=$(now)
    deadline=$((SECONDS + BENCH_TIMEOUT))
    while :; do
        kill -0 "$DAEMON_PID" 2>/dev/null || die "daemon exited before sync"
        if [ "$(cli stats --json 2>/dev/null | json_get synced)" = true ]; then
            elapsed "$t0" "$(now)"
            return
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "daemon not synced within ${BENCH_TIMEOUT}s"
        sleep 0.05
    done
}

routes_total() { cli stats --json 2>/dev/null | json_get routes_total; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$DAEMON_PID/status"; }

floor_dump() {  # floor_dump FAMILY -> seconds for one full JSON dump
    local t0
    t0=$(now)
    ip -n "$NS" -j "-$1" route show table all >/dev/null
    elapsed "$t0" "$(now)"
}

# --- 1. build ----------------------------------------------------------------
if [ -n "${ROUTE_MIRROR_BIN:-}" ]; then
    BIN=$ROUTE_MIRROR_BIN
else
    log "building release binary"
    cargo xtask build --release >&2
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/route-mirror
fi
[ -x "$BIN" ] || die "daemon binary $BIN not found"

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
