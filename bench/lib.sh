#!/usr/bin/env bash
# Helpers shared by the bench/*.sh scripts (sourced; REPO must be set): checks, the
# shared/ route data and netns.sh, a work directory cleaned up on exit, one daemon
# (start/stop/cli/wait_synced) in one namespace, timing and JSON helpers.
# Environment: ROUTE_MIRROR_SHARED, ROUTE_MIRROR_BIN, BENCH_TIMEOUT, BENCH_DAEMON_ARGS.

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

# copy_field PYEXPR: the expression on the daemon's first copy (`copies --json`) as `c`.
copy_field() {
    cli copies --json 2>/dev/null | python3 -c "import json,sys; c=json.load(sys.stdin)[0]; print($1)" 2>/dev/null
}

# until_copy PYEXPR [SLEEP]: polls `copies` until the expression holds (or BENCH_TIMEOUT).
until_copy() {
    local deadline=$((SECONDS + BENCH_TIMEOUT))
    until [ "$(copy_field "$1")" = True ]; do
        kill -0 "$DAEMON_PID" 2>/dev/null || die "daemon exited"
        [ "$SECONDS" -lt "$deadline" ] || die "copy: not ($1) within ${BENCH_TIMEOUT}s"
        sleep "${2:-0.1}"
    done
}

# build_bin  -> sets BIN (the release daemon, or $ROUTE_MIRROR_BIN)
build_bin() {
    if [ -n "${ROUTE_MIRROR_BIN:-}" ]; then
        BIN=$ROUTE_MIRROR_BIN
    else
        log "building release binary"
        cargo xtask build --release >&2
        BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/route-mirror
    fi
    [ -x "$BIN" ] || die "daemon binary $BIN not found"
}
