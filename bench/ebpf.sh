#!/usr/bin/env bash
# The eBPF source and the netlink source side by side, in one run (issue 14). As root:
#   flock /work/locks/heavy bash bench/ebpf.sh
#
# Per source (fresh namespace, release daemon, --scan-interval 3600 so no periodic scan
# falls into a measurement; the periodic scan is measured on its own below):
#   idle    empty namespace: RSS (VmRSS), ring memlock (stats ring.memlock_bytes) and
#           the memlock of every BPF map the daemon holds (fdinfo), quiet lag: BENCH_QUIET
#           single route adds 20 ms apart (bench/lag_probe.py: add, then ask the daemon
#           until it has it; and for eBPF the ring's own kernel->mirror lag histogram).
#   load    a fresh daemon; `ip -batch` loads BENCH_V4 then BENCH_V6 while it runs and the
#           lag probe adds a route every 100 ms; daemon CPU per thread (/proc/PID/task:
#           the core thread = the event path, rm-fib-fast = the lookup snapshot rebuild,
#           the rest = control socket, probe queries) from before the load until the
#           mirror has every route, `ip`'s own CPU (user + sys: the kernel inserts the
#           routes and sends the notifications in its syscalls), the ring's lag, RSS
#           with the full table, syscalls (`perf stat -e raw_syscalls:sys_enter`), then
#           `diff` (not counted) to check the mirror is exact.
# Then, on the namespace holding the full table (daemon stopped): the floor,
# `dump-floor` (bench/dump-floor: dumps what the initial sync dumps and only counts),
# BENCH_RUNS times; per source BENCH_RUNS daemon starts (initial sync time from stats,
# RSS after the sync) and one `scan --wait` (a periodic scan's time and core CPU).
# Prints markdown tables; raw values go to bench/out/ebpf-<date>.json.
#
# Environment: BENCH_V4 / BENCH_V6 (default v4-1m / v6-230k), BENCH_SOURCES (default
# "netlink ebpf"), BENCH_RUNS (default 3), BENCH_QUIET (default 200), BENCH_RING_SIZE,
# ROUTE_MIRROR_BIN, ROUTE_MIRROR_SHARED, BENCH_TIMEOUT (default 900).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
BENCH_V4=${BENCH_V4-v4-1m}
BENCH_V6=${BENCH_V6-v6-230k}
BENCH_SOURCES=${BENCH_SOURCES:-netlink ebpf}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_QUIET=${BENCH_QUIET:-200}
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
build_bin
log "building dump-floor"
cargo build --release -p route-mirror-floor >&2
FLOOR=${CARGO_TARGET_DIR:-$REPO/target}/release/dump-floor
PROBE=$REPO/bench/lag_probe.py
BASE_ARGS=("${DAEMON_ARGS[@]}" --scan-interval 3600)
[ -n "${BENCH_RING_SIZE:-}" ] && BASE_ARGS+=(--ring-size "$BENCH_RING_SIZE")
RES=$WORK/results.jsonl
: >"$RES"
uptime | sed 's/^/bench: load at start: /' >&2

# thread_cpu PID -> "core fast other" CPU seconds (utime + stime of each thread)
thread_cpu() {
    local hz t comm core=0 fast=0 other=0 v
    hz=$(getconf CLK_TCK)
    for t in /proc/"$1"/task/*; do
        comm=$(cat "$t/comm" 2>/dev/null) || continue
        v=$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null) || continue
        case $comm in
        rm-core*) core=$((core + v)) ;;
        rm-fib-fast) fast=$((fast + v)) ;;
        *) other=$((other + v)) ;;
        esac
    done
    echo "$core $fast $other" | awk -v hz="$hz" '{printf "%.3f %.3f %.3f\n", $1/hz, $2/hz, $3/hz}'
}

# bpf_memlock PID -> bytes of memlock of every BPF map the process holds
bpf_memlock() {
    local sum=0 f v
    for f in /proc/"$1"/fdinfo/*; do
        grep -q '^map_type:' "$f" 2>/dev/null || continue
        v=$(awk '/^memlock:/ {print $2}' "$f")
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

stat_json() { cli stats --json; }

# RSS once the lookup snapshot has been rebuilt (a rebuild holds the old and the new
# snapshot and its extract for a moment, then trims the heap): the steady state.
settled_rss() {
    local deadline=$((SECONDS + BENCH_TIMEOUT))
    until stat_json | python3 -c 'import json,sys; sys.exit(0 if (json.load(sys.stdin).get("fast_lookup") or {}).get("current") else 1)'; do
        [ "$SECONDS" -lt "$deadline" ] || die "lookup snapshot never current"
        sleep 0.2
    done
    sleep 1
    rss_kib
}
record() { echo "$1" >>"$RES"; } # one JSON object per line

for SRC in $BENCH_SOURCES; do
    DAEMON_ARGS=("${BASE_ARGS[@]}" --source "$SRC")

    # --- idle + quiet lag -----------------------------------------------------
    NS=$(ns_new_name)
    ns_create "$NS" || die "cannot create namespace $NS"
    start_daemon
    wait_synced >/dev/null
    sleep 1
    rss_idle=$(rss_kib)
    maps_idle=$(bpf_memlock "$DAEMON_PID")
    c0=$(thread_cpu "$DAEMON_PID")
    sleep 5
    c1=$(thread_cpu "$DAEMON_PID")
    log "$SRC: quiet lag probe ($BENCH_QUIET adds)"
    quiet=$(ip netns exec "$NS" python3 "$PROBE" "$SOCK" --count "$BENCH_QUIET" --interval 0.02)
    st=$(stat_json)
    record "$(python3 -c '
import json, sys
src, rss, maps, c0, c1, quiet, st = sys.argv[1:]
s = json.loads(st); r = s.get("ring") or {}
idle = sum(map(float, c1.split())) - sum(map(float, c0.split()))
print(json.dumps({"phase": "idle", "source": src, "rss_kib": int(rss), "bpf_maps_memlock": int(maps),
  "ring_memlock": r.get("memlock_bytes"), "ring_size": r.get("size_bytes"), "idle_cpu_5s": idle,
  "probe": json.loads(quiet), "ring_lag": r.get("lag")}))' "$SRC" "$rss_idle" "$maps_idle" "$c0" "$c1" "$quiet" "$st")"
    stop_daemon
    ns_delete "$NS"

    # --- live load ------------------------------------------------------------
    NS=$(ns_new_name)
    ns_create "$NS" || die "cannot create namespace $NS"
    start_daemon
    wait_synced >/dev/null
    base_routes=$(routes_total)
    PERF=""
    if command -v perf >/dev/null 2>&1; then
        perf stat -e raw_syscalls:sys_enter -x, -o "$WORK/$SRC.perf" -p "$DAEMON_PID" 2>/dev/null &
        PERF=$!
    fi
    rm -f "$WORK/stop"
    ip netns exec "$NS" python3 "$PROBE" "$SOCK" --count 100000 --interval 0.1 \
        --offset 100000 --stop "$WORK/stop" >"$WORK/$SRC.probe" &
    PROBE_PID=$!
    sleep 0.5
    ev0=$(stat_json | json_get events_applied)
    cpu0=$(thread_cpu "$DAEMON_PID")
    t0=$(now)
    ipcpu=0
    for s in $BENCH_V4 $BENCH_V6; do
        log "$SRC: loading $s"
        # shellcheck disable=SC2016
        u=$( { /usr/bin/time -f '%U %S' bash -c 'zcat "$1" | ip -n "$2" -batch - >/dev/null' _ \
            "$ROUTES/$s.batch.gz" "$NS"; } 2>&1 | tail -1)
        ipcpu=$(python3 -c "import sys; print(float(sys.argv[1]) + sum(map(float, sys.argv[2].split())))" "$ipcpu" "$u")
    done
    t_load=$(now)
    touch "$WORK/stop"
    wait "$PROBE_PID" || true
    # Caught up: every route the load and the probe added is mirrored, nothing moves.
    deadline=$((SECONDS + BENCH_TIMEOUT))
    prev=""
    while :; do
        ev=$(stat_json | json_get events_applied)
        [ "$ev" = "$prev" ] && break
        prev=$ev
        [ "$SECONDS" -lt "$deadline" ] || die "$SRC: mirror did not settle"
        sleep 0.2
    done
    t_conv=$(now)
    if [ -n "$PERF" ]; then kill -INT "$PERF" 2>/dev/null || true; wait "$PERF" 2>/dev/null || true; fi
    syscalls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$WORK/$SRC.perf" 2>/dev/null || echo)
    st=$(stat_json)
    # CPU read once the lookup snapshot is rebuilt: its rebuild after the load counts.
    rss_full=$(settled_rss)
    cpu1=$(thread_cpu "$DAEMON_PID")
    cli diff >/dev/null || die "$SRC: diff found differences after the load"
    record "$(python3 -c '
import json, sys
src, t0, tl, tc, c0, c1, ipcpu, ev0, st, probe, sysc, rss, base = sys.argv[1:]
s = json.loads(st); r = s.get("ring") or {}
d = [b - a for a, b in zip(map(float, c0.split()), map(float, c1.split()))]
print(json.dumps({"phase": "load", "source": src, "load_s": float(tl) - float(t0),
  "settled_s": float(tc) - float(t0), "changes": s["events_applied"] - int(ev0),
  "cpu_core": d[0], "cpu_fast": d[1], "cpu_other": d[2], "ip_cpu": float(ipcpu),
  "routes": s["routes_total"] - int(base), "rss_kib": int(rss), "syscalls": int(sysc) if sysc else None,
  "enobufs": s.get("enobufs"), "resyncs": s.get("resyncs"), "ring_lag": r.get("lag"),
  "ring_drops": (r.get("kernel") or {}).get("drops"), "ring_compact": (r.get("kernel") or {}).get("compact"),
  "ring_records": (r.get("kernel") or {}).get("records"), "ring_high_water": r.get("high_water_bytes"),
  "ring_batch": r.get("batch"), "probe": json.loads(open(probe).read() or "{}")}))' \
        "$SRC" "$t0" "$t_load" "$t_conv" "$cpu0" "$cpu1" "$ipcpu" "$ev0" "$st" "$WORK/$SRC.probe" \
        "${syscalls:-}" "$rss_full" "$base_routes")"
    stop_daemon
    # The last source's loaded namespace is kept for the sync runs (cleanup deletes it).
    if [ "$SRC" != "${BENCH_SOURCES##* }" ]; then
        ns_delete "$NS"
        NS=""
    fi
done

# --- initial sync against the floor, periodic scan (namespace with the full table) ---
for i in $(seq "$BENCH_RUNS"); do
    f=$(ip netns exec "$NS" "$FLOOR" | awk '/^dump-floor:/ {print $(NF-1), $2}')
    record "{\"phase\": \"floor\", \"run\": $i, \"secs\": ${f% *}, \"routes\": ${f#* }}"
done
for SRC in $BENCH_SOURCES; do
    DAEMON_ARGS=("${BASE_ARGS[@]}" --source "$SRC")
    for i in $(seq "$BENCH_RUNS"); do
        start_daemon
        wait_synced >/dev/null
        st=$(stat_json)
        rss_sync=$(settled_rss)
        scan=""
        if [ "$i" = 1 ]; then
            c0=$(thread_cpu "$DAEMON_PID")
            t0=$(now)
            cli scan --wait >/dev/null
            t1=$(now)
            c1=$(thread_cpu "$DAEMON_PID")
            scan=$(python3 -c 'import sys; a=list(map(float,sys.argv[1].split())); b=list(map(float,sys.argv[2].split())); print(f"{b[0]-a[0]:.3f} {float(sys.argv[4])-float(sys.argv[3]):.3f}")' "$c0" "$c1" "$t0" "$t1")
        fi
        record "$(python3 -c '
import json, sys
src, i, st, rss, scan = sys.argv[1:]
s = json.loads(st)
o = {"phase": "sync", "source": src, "run": int(i), "sync_ms": s.get("initial_sync_ms"),
     "routes": s["routes_total"], "rss_kib": int(rss)}
if scan:
    c, t = map(float, scan.split()); o["scan_core_cpu"] = c; o["scan_s"] = t
print(json.dumps(o))' "$SRC" "$i" "$st" "$rss_sync" "$scan")"
        stop_daemon
    done
done
uptime | sed 's/^/bench: load at end: /' >&2
mkdir -p "$OUT"
cp "$RES" "$OUT/ebpf-$(date +%Y%m%d-%H%M%S).jsonl"

python3 - "$RES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def get(phase, src):
    return [r for r in rows if r["phase"] == phase and r.get("source") == src]
srcs = []
for r in rows:
    if r.get("source") and r["source"] not in srcs:
        srcs.append(r["source"])
floor = sorted(r["secs"] for r in rows if r["phase"] == "floor")
fmed = statistics.median(floor)
def us(x): return "n/a" if x is None else f"{x:,.0f}"
def lag(l):
    return "n/a" if not l else f"{l['p50_us']:,.0f} / {l['p99_us']:,.0f} / {l['max_us']:,.0f}"
print("| | " + " | ".join(srcs) + " |")
print("|---|" + "---:|" * len(srcs))
line = lambda name, f: print(f"| {name} | " + " | ".join(f(s) for s in srcs) + " |")
L = {s: get("load", s)[0] for s in srcs}
I = {s: get("idle", s)[0] for s in srcs}
S = {s: get("sync", s) for s in srcs}
line("route changes applied", lambda s: f"{L[s]['changes']:,}")
line("core thread CPU s (event path)", lambda s: f"{L[s]['cpu_core']:.2f}")
line("**CPU per change, core thread µs**", lambda s: f"**{L[s]['cpu_core'] / L[s]['changes'] * 1e6:.2f}**")
line("snapshot rebuild thread CPU s (rm-fib-fast)", lambda s: f"{L[s]['cpu_fast']:.2f}")
line("other threads CPU s (control socket, probe)", lambda s: f"{L[s]['cpu_other']:.2f}")
line("CPU per change, whole daemon µs", lambda s: f"{(L[s]['cpu_core'] + L[s]['cpu_fast'] + L[s]['cpu_other']) / L[s]['changes'] * 1e6:.2f}")
line("`ip -batch` + kernel CPU s (user + sys)", lambda s: f"{L[s]['ip_cpu']:.2f}")
line("**core CPU / kernel CPU**", lambda s: f"**{L[s]['cpu_core'] / L[s]['ip_cpu'] * 100:.1f}%**")
line("whole daemon CPU / kernel CPU", lambda s: f"{(L[s]['cpu_core'] + L[s]['cpu_fast'] + L[s]['cpu_other']) / L[s]['ip_cpu'] * 100:.1f}%")
line("load s / settled s", lambda s: f"{L[s]['load_s']:.1f} / {L[s]['settled_s']:.1f}")
line("syscalls during the load", lambda s: f"{L[s]['syscalls']:,}" if L[s]['syscalls'] else "n/a")
line("ENOBUFS / resyncs / ring drops", lambda s: f"{L[s]['enobufs']} / {L[s]['resyncs']} / {L[s]['ring_drops'] if L[s]['ring_drops'] is not None else 'n/a'}")
line("ring records compact / all", lambda s: f"{L[s]['ring_compact']:,} / {L[s]['ring_records']:,}" if L[s]['ring_records'] else "n/a")
line("**RSS idle, empty namespace MiB**", lambda s: f"**{I[s]['rss_kib'] / 1024:.1f}**")
line("**RSS full table after the load MiB**", lambda s: f"**{L[s]['rss_kib'] / 1024:.1f}**")
line("RSS full table after the initial sync MiB (median)", lambda s: f"{statistics.median(r['rss_kib'] for r in S[s]) / 1024:.1f}")
line("**ring memlock MiB** (all BPF maps)", lambda s: "n/a" if I[s]['ring_memlock'] is None else f"**{I[s]['ring_memlock'] / 1048576:.2f}** ({I[s]['bpf_maps_memlock'] / 1048576:.2f})")
line("idle CPU over 5 s (ms)", lambda s: f"{I[s]['idle_cpu_5s'] * 1000:.0f}")
line("**lag quiet, ring p50 / p99 / max µs**", lambda s: lag(I[s]['ring_lag']))
line("lag quiet, probe p50 / p99 / max µs", lambda s: lag(I[s]['probe']))
line("**lag during the load, ring p50 / p99 / max µs**", lambda s: lag(L[s]['ring_lag']))
line("lag during the load, probe p50 / p99 / max µs", lambda s: lag(L[s]['probe']))
line("probe samples quiet / load", lambda s: f"{I[s]['probe']['samples']} / {L[s]['probe'].get('samples', 0)}")
line(f"**initial sync s, median of {len(floor)}** (floor `dump-floor` median {fmed:.3f} s)",
     lambda s: f"**{statistics.median(r['sync_ms'] for r in S[s]) / 1000:.3f}** ({statistics.median(r['sync_ms'] for r in S[s]) / 1000 / fmed:.2f}x)")
line("initial sync runs s", lambda s: ", ".join(f"{r['sync_ms'] / 1000:.3f}" for r in S[s]))
line("periodic scan: s / core CPU s", lambda s: next((f"{r['scan_s']:.2f} / {r['scan_core_cpu']:.2f}" for r in S[s] if 'scan_s' in r), "n/a"))
print(f"\nfloor runs s: {', '.join(f'{x:.3f}' for x in floor)}; routes mirrored: {S[srcs[0]][0]['routes']:,}")
PY
