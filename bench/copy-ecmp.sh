#!/usr/bin/env bash
# Kernel copies (issue 15): an ECMP-heavy set copied with its multipath routes inline
# vs through shared nexthop objects (copy/nhpool.rs). N IPv4 routes (default 200,000),
# each through 2-4 of 8 gateways on veth1/veth2 (40 distinct hop lists), loaded into
# namespace A's main by bench/floor.c; then, for each mode, a fresh daemon copies A's
# main into an empty table 200 of a fresh namespace B: the copy's first pass (from
# both mirrors synced to every route written and confirmed), its rate, the copy
# thread's CPU, and the objects it made. Then one route's hop list changes in A for
# 1,000 routes sharing a group, timed until the target matches (diff --copy empty).
# Run under `flock /work/locks/heavy`. Usage: bench/copy-ecmp.sh [N]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/bench/lib.sh"
N=${1:-200000}

build_bin
FLOOR=$WORK/floor
cc -O2 -o "$FLOOR" "$REPO/bench/floor.c" || die "cc bench/floor.c"

ROUTES_TXT=$WORK/ecmp.txt
python3 - "$N" >"$ROUTES_TXT" <<'PY'
import itertools, sys
n = int(sys.argv[1])
gws = [(f"198.18.1.{i}", "veth1") for i in range(2, 6)] + [(f"198.18.2.{i}", "veth2") for i in range(2, 6)]
lists = []
for k in (2, 3, 4):
    lists += list(itertools.combinations(gws, k))
lists = lists[::max(1, len(lists) // 40)][:40]
for i in range(n):
    hops = " ".join(f"nexthop via {g} dev {d}" for g, d in lists[i % len(lists)])
    print(f"route add 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32 {hops}")
PY

B=""
trap 'rc=$?; stop_daemon; ns_delete "$B"; (exit $rc); cleanup' EXIT

log "$(uptime)"
A=$(ns_new_name); ns_create "$A"; NS=$A
LOAD=$(ip netns exec "$A" "$FLOOR" -t 254 -p 3 "$ROUTES_TXT")
log "source loaded: $LOAD"
RESULTS=()
for mode in true false; do
    B=$(ns_new_name); ns_create "$B"
    CFG=$WORK/copy-$mode.toml
    printf '[[copy]]\nname = "ecmp"\nfrom = "main"\nto = "%s/200"\nnexthop_objects = %s\n' "$B" "$mode" >"$CFG"
    rm -f "$SOCK"
    "$BIN" --config "$CFG" run --netns "$A" --socket "$SOCK" >>"$WORK/daemon.log" 2>&1 &
    DAEMON_PID=$!
    wait_synced >/dev/null
    until_copy 'c["state"] == "synced"' 0.2
    MS=$(copy_field 'c["initial_sync_ms"]')
    INST=$(copy_field 'c["verdicts"]["installed"]')
    CPU=$(copy_field 'c["cpu_s"]')
    OBJS=$(copy_field 'c["nexthop_objects"]["objects"]')
    [ "$INST" -ge "$N" ] || die "installed $INST of $N"
    cli diff --copy ecmp >/dev/null || die "diff --copy not empty after the first pass"
    # 1,000 routes of one hop list move to another list (a hop changes).
    python3 - "$ROUTES_TXT" >"$WORK/change.txt" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
first = lines[0].split(" nexthop ", 1)[1]
same = [l for l in lines if l.split(" nexthop ", 1)[1] == first][:1000]
for l in same:
    p = l.split()[2]
    print(f"route replace {p} nexthop via 198.18.1.9 dev veth1 nexthop via 198.18.2.9 dev veth2")
PY
    t0=$(now)
    ip -n "$A" -batch "$WORK/change.txt"
    until cli diff --copy ecmp >/dev/null; do sleep 0.05; done
    CHG=$(elapsed "$t0" "$(now)")
    log "nexthop_objects=$mode: first pass ${MS} ms, installed $INST, copy thread ${CPU}s CPU, objects $OBJS; 1,000 routes' hops changed: target equal after ${CHG}s"
    RESULTS+=("$mode $MS $INST $CPU $OBJS $CHG")
    stop_daemon
    ns_delete "$B"; B=""
done
log "$(uptime)"
python3 - "$N" "${RESULTS[@]}" <<'PY'
import sys
n = int(sys.argv[1])
rows = [r.split() for r in sys.argv[2:]]
print(f"| {n:,} IPv4 multipath routes (2-4 hops, 40 hop lists) | first pass | routes/s | copy thread CPU per route | objects | 1,000 routes' hops changed: target equal after |")
print("|---|---:|---:|---:|---:|---:|")
for mode, ms, inst, cpu, objs, chg in rows:
    name = "through nexthop objects" if mode == "true" else "inline multipath"
    s = float(ms) / 1000
    print(f"| {name} | {s:.2f} s | {n / s:,.0f} | {float(cpu) / int(inst) * 1e6:.2f} us | {objs} | {float(chg):.2f} s |")
PY
