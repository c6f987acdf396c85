#!/usr/bin/env bash
# eBPF source vs netlink source under the same bulk load. Run as root:  bench/ebpf.sh
#
# For each source: fresh namespace (shared/routes/netns.sh topology), start the daemon
# (--source S), wait for sync, load the route sets while it runs, then measure the time
# until `diff` reports mirror == kernel (convergence), daemon CPU seconds
# (/proc/PID/stat utime+stime, load included), ENOBUFS/resyncs, ring drops, p50/p99 lag,
# RSS, syscalls the daemon made during load + convergence (`perf stat -e
# raw_syscalls:sys_enter -p PID`: a tracepoint count, no ptrace slowdown; `strace -c -f`
# is the fallback when perf is missing), and the kernel memory (memlock) of the
# daemon's BPF maps (ring, counters, and with BENCH_BPF_FIB the fib4/fib6/nhgroups maps).
# Prints one markdown table.
#
# Environment: BENCH_V4 / BENCH_V6 (default v4-1m / v6-230k), BENCH_SOURCES (default
# "netlink ebpf"; "ebpf+fib" adds --bpf-fib), BENCH_RING_SIZE (default: the daemon's), ROUTE_MIRROR_BIN,
# ROUTE_MIRROR_SHARED, BENCH_TIMEOUT (default 900), BENCH_BPF_FIB (e.g. "main,100": also
# keep the pinned BPF FIB of those tables, both sources).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
BENCH_V4=${BENCH_V4-v4-1m}
BENCH_V6=${BENCH_V6-v6-230k}
BENCH_SOURCES=${BENCH_SOURCES:-netlink ebpf}
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
build_bin

cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
BASE_ARGS=("${DAEMON_ARGS[@]}")

ROWS=()
for SRC in $BENCH_SOURCES; do
    NS=$(ns_new_name)
    ns_create "$NS" || die "cannot create namespace $NS"
    DAEMON_ARGS=("${BASE_ARGS[@]}" --source "${SRC%%+*}")
    [ -n "${BENCH_RING_SIZE:-}" ] && DAEMON_ARGS+=(--ring-size "$BENCH_RING_SIZE")
    [ -n "${BENCH_BPF_FIB:-}" ] && DAEMON_ARGS+=(--bpf-fib "$BENCH_BPF_FIB")
    # "ebpf+fib": the eBPF source plus the pinned BPF FIB of main and table 100.
    [ "${SRC#*+}" = fib ] && DAEMON_ARGS+=(--bpf-fib "${BENCH_BPF_FIB:-main,100}")
    start_daemon
    wait_synced >/dev/null
    PID=$DAEMON_PID
    deadline=$((SECONDS + BENCH_TIMEOUT))
    cpu0=$(cpu_s "$PID")
    SYSC=""
    if command -v perf >/dev/null 2>&1; then
        perf stat -e raw_syscalls:sys_enter -x, -o "$WORK/$SRC.perf" -p "$PID" 2>/dev/null &
        SYSC=$!
    elif command -v strace >/dev/null 2>&1; then
        strace -c -f -q -o "$WORK/$SRC.strace" -p "$PID" 2>/dev/null &
        SYSC=$!
    fi
    t0=$(now)
    for s in $BENCH_V4 $BENCH_V6; do
        log "$SRC: loading $s"
        load_batch "$NS" "$ROUTES/$s.batch.gz" >/dev/null || die "loading $s failed"
    done
    t_load=$(now)
    until cli diff >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$SRC: mirror did not converge"
        sleep 0.2
    done
    t_conv=$(now)
    cpu1=$(cpu_s "$PID")
    if [ -n "$SYSC" ]; then kill -INT "$SYSC" 2>/dev/null || true; wait "$SYSC" 2>/dev/null || true; fi
    syscalls=n/a
    if [ -s "$WORK/$SRC.perf" ]; then
        syscalls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$WORK/$SRC.perf")
    elif [ -s "$WORK/$SRC.strace" ]; then
        syscalls=$(awk '$NF == "total" {print $3}' "$WORK/$SRC.strace")
    fi
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
    st=$(cli stats --json)
    # Kernel memory of every BPF map the daemon holds (bpftool's memlock per map id).
    bpfmem=0
    if command -v bpftool >/dev/null 2>&1; then
        ids=$(ls -l "/proc/$PID/fd" 2>/dev/null | awk '/anon_inode:bpf-map/ {print $NF}' | wc -l)
        bpfmem=$(bpftool -j map show 2>/dev/null | python3 -c "
import json, sys, os
pid = sys.argv[1]
ids = set()
for fd in os.listdir(f'/proc/{pid}/fdinfo'):
    try:
        t = open(f'/proc/{pid}/fdinfo/{fd}').read()
    except OSError:
        continue
    for l in t.splitlines():
        if l.startswith('map_id:'):
            ids.add(int(l.split()[1]))
print(sum(m.get('bytes_memlock', 0) for m in json.load(sys.stdin) if m['id'] in ids))
" "$PID" 2>/dev/null || echo 0)
        log "$SRC: $ids BPF map fds, $bpfmem bytes memlock"
    fi
    row=$(python3 - "$SRC" "$t0" "$t_load" "$t_conv" "$cpu0" "$cpu1" "$rss" "$st" "$syscalls" "$bpfmem" <<'PY'
import json, sys
src, t0, tl, tc, c0, c1, rss, st, sysc, bpfmem = sys.argv[1:]
s = json.loads(st)
r = s.get("ring") or {}
k = r.get("kernel", {})
lag = r.get("lag", {})
f = lambda x: f"{x:.0f}" if isinstance(x, (int, float)) else "n/a"
print(f"| {src} | {float(tl)-float(t0):.1f} | {float(tc)-float(t0):.1f} | {float(c1)-float(c0):.2f} | "
      f"{s['enobufs']} / {s['resyncs']} | {k.get('drops', 'n/a')} | {f(lag.get('p50_us'))} / {f(lag.get('p99_us'))} | "
      f"{int(rss)/1024:.0f} | {int(bpfmem)/1048576:.1f} | {sysc} | {r.get('high_water_bytes', 'n/a')} | {s['routes_total']} |")
PY
)
    ROWS+=("$row")
    stop_daemon
    ns_delete "$NS"; NS=""
done
echo "| source | load s | converged s | daemon CPU s | enobufs / resyncs | ring drops | lag p50 / p99 µs | RSS MiB | BPF maps MiB | syscalls | ring high water B | routes |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
