#!/usr/bin/env bash
# Kernel copies (issue 15), all in one run on the same 1M IPv4 routes (v4-1m with
# `table 100` dropped: 1M distinct prefix/metric pairs in one table):
#   1. `ip -batch` into an empty table (one route per sendmsg, an ACK each);
#   2. bench/floor.c, the kernel's floor (prebuilt messages, 256 KiB per sendmsg);
#   3. the daemon copying namespace A's main into B/200 (empty): the copy's first pass
#      from both mirrors synced to every route written and confirmed, its rate, and
#      the daemon's CPU per installed route; then the floor again into B while the
#      daemon mirrors B (a copy's target is always mirrored: its floor);
#   4. lag: A's main flushed (the copy removes 1M routes), then the floor loads the 1M
#      routes into A at the kernel's full rate while the copy follows: the copy's lag
#      histogram (source change seen -> write acknowledged, p50/p99/max) and how long
#      the target trailed the source's last route;
#   5. repair: foreign deletes in B/200, time from sending the delete to the kernel's
#      notification of the copy's re-add (netlink in B, no polling).
# Run under `flock /work/locks/heavy` on a shared machine. Usage: bench/copy.sh [RUNS]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/bench/lib.sh"
RUNS=${1:-1}

build_bin
FLOOR=$WORK/floor
cc -O2 -o "$FLOOR" "$REPO/bench/floor.c" || die "cc bench/floor.c"

ROUTES_TXT=$WORK/v4-1m-main.txt
zcat "$ROUTES/v4-1m.batch.gz" | sed 's/ table 100//' >"$ROUTES_TXT"
N=$(wc -l <"$ROUTES_TXT")
# The same routes for `ip -batch`, into table 300 (after the prefix: multipath lines end in hops).
sed -E 's/^route add (blackhole )?([^ ]+)/route add \1\2 table 300/' "$ROUTES_TXT" >"$WORK/ipbatch.txt"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
B=""
# lib.sh's cleanup (daemon, $NS, work directory) after the second namespace.
trap 'rc=$?; stop_daemon; ns_delete "$B"; (exit $rc); cleanup' EXIT
BASE_ARGS=("${DAEMON_ARGS[@]}")
TCK=$(getconf CLK_TCK)

copy_json() { cli copies --json 2>/dev/null; }
# flush_table NS TABLE [ip route selectors...]: `ip route flush` gives up after a while
# on a loaded machine (1M routes): again until empty.
flush_table() {
    local ns=$1 t=$2
    shift 2
    until [ -z "$(ip -n "$ns" route show table "$t" "$@" | head -1)" ]; do
        ip -n "$ns" route flush table "$t" "$@" >/dev/null 2>&1 || true
    done
}
# Events lost by either mirror so far (each forces a resync): warnings in the daemon log.
losses() { grep -c -E "events were lost|ring lost notifications|dump stalled" "$WORK/daemon.log" || true; }

for run in $(seq "$RUNS"); do
    log "run $run/$RUNS: $(uptime)"
    A=$(ns_new_name); ns_create "$A"; NS=$A
    B=$(ns_new_name); ns_create "$B"

    # 1. ip -batch
    t0=$(now); ip -n "$B" -batch "$WORK/ipbatch.txt" >/dev/null; t1=$(now)
    IPB=$(elapsed "$t0" "$t1")
    flush_table "$B" 300
    log "ip -batch: ${IPB}s"

    # 2. floor
    FLOOR_JSON=$(ip netns exec "$B" "$FLOOR" -t 301 "$ROUTES_TXT")
    flush_table "$B" 301
    log "floor: $FLOOR_JSON"

    # 3. the copy, into an empty B/200
    ip netns exec "$A" "$FLOOR" -t 254 -p 3 "$ROUTES_TXT" >/dev/null
    DAEMON_ARGS=("${BASE_ARGS[@]}" --copy "main=$B/200")
    start_daemon
    wait_synced >/dev/null
    until_copy 'c["state"] == "synced"' 0.2
    COPY_MS=$(copy_field 'c["initial_sync_ms"]')
    INSTALLED=$(copy_field 'c["verdicts"]["installed"]')
    COPY_CPU=$(copy_field 'c["cpu_s"]')
    DAEMON_CPU=$(python3 -c "print($(cpu_ticks "$DAEMON_PID") / $TCK)")
    [ "$(ip -n "$B" route show table 200 proto 240 | grep -c '^')" -ge "$((N * 9 / 10))" ] || die "B/200 not filled"
    log "losses so far: $(losses)"
    log "copy: ${COPY_MS} ms, installed $INSTALLED, copy thread ${COPY_CPU}s CPU, daemon ${DAEMON_CPU}s CPU (incl. both initial syncs)"

    # 3b. the floor into B while the daemon mirrors B, as a copy's target always is
    # (that is how foreign changes are seen): every route also goes to B's mirror.
    FLOOR_M_JSON=$(ip netns exec "$B" "$FLOOR" -t 301 "$ROUTES_TXT")
    flush_table "$B" 301
    log "floor into the mirrored B: $FLOOR_M_JSON"

    # 4. lag: flush the source (the copy removes everything), then a full-rate load.
    cpu0=$(cpu_ticks "$DAEMON_PID"); ccpu0=$COPY_CPU
    t0=$(now)
    flush_table "$A" main proto 3
    FLUSH_S=$(elapsed "$t0" "$(now)")
    until_copy 'c["installed"] <= 1000 and c["pending"] == 0'
    REMOVE_S=$(elapsed "$t0" "$(now)")
    REMOVE_CPU=$(python3 -c "print(($(cpu_ticks "$DAEMON_PID") - $cpu0) / $TCK)")
    log "losses so far: $(losses)"
    log "removal of ${N} routes: ${REMOVE_S}s after the flush began (the flush itself, ip: ${FLUSH_S}s), daemon CPU ${REMOVE_CPU}s"
    # A fresh daemon (it adopts the empty copy) so the lag histogram holds this load only.
    stop_daemon
    start_daemon
    wait_synced >/dev/null
    until_copy 'c["state"] == "synced"'
    cpu0=$(cpu_ticks "$DAEMON_PID"); ccpu0=$(copy_field 'c["cpu_s"]')
    t0=$(now)
    LOAD_JSON=$(ip netns exec "$A" "$FLOOR" -t 254 -p 3 "$ROUTES_TXT")
    t_loaded=$(now)
    until_copy "c['pending'] == 0 and c['installed'] >= $((N * 9 / 10))" 0.01
    t_done=$(now)
    TRAIL=$(elapsed "$t_loaded" "$t_done")
    LAG=$(copy_field 'json.dumps(c["lag"])')
    cpu1=$(cpu_ticks "$DAEMON_PID")
    LOAD_CPU=$(python3 -c "print(($cpu1 - $cpu0) / $TCK)")
    LOAD_COPY_CPU=$(python3 -c "print($(copy_field 'c["cpu_s"]') - $ccpu0)")
    log "losses so far: $(losses) (log restarted with the daemon: cumulative)"
    log "full-rate load: $LOAD_JSON; target done ${TRAIL}s after the load; lag $LAG; daemon CPU ${LOAD_CPU}s (copy thread ${LOAD_COPY_CPU}s)"

    # 5. repair of foreign deletes: from just before the RTM_DELROUTE is sent until the
    # kernel's notification of the copy's re-add is read, on a netlink socket subscribed
    # in B (a poll with `ip route show PREFIX` cannot time it: it dumps the whole
    # 1M-route table, 1-7 s per poll depending on the machine's load).
    REPAIRS=$(ip netns exec "$B" python3 - <<'EOF'
import select, socket, struct, subprocess, time
TABLE, COUNT = 200, 10
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
s.bind((0, 0x40))  # RTMGRP_IPV4_ROUTE
out = subprocess.run(["ip", "route", "show", "table", str(TABLE), "proto", "240"],
                     capture_output=True, text=True).stdout.splitlines()
# single-path routes only (a multipath route's hops are continuation lines), spread out
single = [l.split()[0] for l in out if l[:1].isdigit() and " via " in l]
prefixes = single[:: max(1, len(single) // COUNT)][:COUNT]

def events(buf):
    """(type, dst, table) of each RTM_NEWROUTE/RTM_DELROUTE in a datagram."""
    off = 0
    while off + 16 <= len(buf):
        ln, ty = struct.unpack_from("IH", buf, off)
        if ln < 16:
            break
        if ty in (24, 25):
            dlen, table = buf[off + 17], buf[off + 20]
            a, dst = off + 28, None
            while a + 4 <= off + ln:
                al, at = struct.unpack_from("HH", buf, a)
                if al < 4:
                    break
                if at == 1:
                    dst = socket.inet_ntop(socket.AF_INET, buf[a + 4:a + 8]) + "/" + str(dlen)
                elif at == 15:
                    table = struct.unpack_from("I", buf, a + 4)[0]
                a += (al + 3) & ~3
            yield ty, dst, table
        off += (ln + 3) & ~3

def delete(p):
    """RTM_DELROUTE of p from TABLE, sent on its own socket; returns once the kernel
    has deleted it (its ACK)."""
    addr, plen = p.split("/")
    rta_dst = struct.pack("HH", 8, 1) + socket.inet_aton(addr)
    rta_table = struct.pack("HHI", 8, 15, TABLE)
    body = struct.pack("BBBBBBBBI", socket.AF_INET, int(plen), 0, 0, 0, 0, 0, 0, 0) + rta_dst + rta_table
    hdr = struct.pack("IHHII", 16 + len(body), 25, 0x1 | 0x4, 1, 0)  # REQUEST | ACK
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as w:
        w.send(hdr + body)
        ack = w.recv(65536)
    err = struct.unpack_from("i", ack, 16)[0]
    assert err == 0, f"delete {p}: errno {-err}"

times = []
for p in prefixes:
    p = p if "/" in p else p + "/32"
    t_del = time.monotonic()  # from just before the delete: an upper bound
    delete(p)
    t_new = None
    deadline = t_del + 30
    while t_new is None and time.monotonic() < deadline:
        if not select.select([s], [], [], 0.5)[0]:
            continue
        buf = s.recv(1 << 20)
        t = time.monotonic()
        for ty, dst, table in events(buf):
            if dst == p and table == TABLE and ty == 24:
                t_new = t
    if t_new is not None:
        times.append((t_new - t_del) * 1000)
    time.sleep(0.2)
times.sort()
lost = len(prefixes) - len(times)
print(f"{len(times)} repairs (delete sent to the re-add's notification read): median {times[len(times)//2]:.1f} ms,"
      f" max {times[-1]:.1f} ms" + (f"; {lost} not repaired within 30 s" if lost else ""))
EOF
)
    log "$REPAIRS"
    stop_daemon
    ns_delete "$A"; ns_delete "$B"; NS=""; B=""

    python3 - "$N" "$IPB" "$FLOOR_JSON" "$COPY_MS" "$INSTALLED" "$COPY_CPU" "$LOAD_CPU" "$LOAD_COPY_CPU" "$TRAIL" "$LAG" "$REPAIRS" "$REMOVE_S" "$REMOVE_CPU" "$LOAD_JSON" "$FLUSH_S" "$FLOOR_M_JSON" <<'EOF'
import json, sys
n, ipb, floor, copy_ms, inst, ccpu, lcpu, lccpu, trail, lag, rep, rm_s, rm_cpu, load, flush_s, floor_m = sys.argv[1:]
load = json.loads(load); floor_m = json.loads(floor_m)
n = int(n); ipb = float(ipb); floor = json.loads(floor); copy_s = float(copy_ms) / 1000
lag = json.loads(lag)
print(f"| writer ({n:,} IPv4 routes into an empty table) | time | routes/s | vs ip -batch | vs floor rate |")
print("|---|---:|---:|---:|---:|")
print(f"| ip -batch | {ipb:.1f} s | {n/ipb:,.0f} | 1.00 | {n/ipb/floor['rate']:.2f} |")
print(f"| bench/floor.c | {floor['seconds']:.1f} s | {floor['rate']:,.0f} | {floor['seconds']/ipb:.2f} | 1.00 |")
print(f"| bench/floor.c into the mirrored target (B, while the daemon mirrors it) | {floor_m['seconds']:.1f} s | {floor_m['rate']:,.0f} | {floor_m['seconds']/ipb:.2f} | {floor_m['rate']/floor['rate']:.2f} |")
print(f"| route-mirror copy (first pass) | {copy_s:.1f} s | {n/copy_s:,.0f} | {copy_s/ipb:.2f} | {n/copy_s/floor['rate']:.2f} ({n/copy_s/floor_m['rate']:.2f} of the mirrored floor) |")
print()
print(f"copy thread CPU for the first pass: {float(ccpu):.1f} s = {float(ccpu)/int(inst)*1e6:.2f} us per installed route")
print(f"source flushed (`ip route flush`, {float(flush_s):.1f} s): the copy's target empty {float(rm_s):.1f} s after the flush began (daemon CPU {float(rm_cpu):.1f} s)")
print(f"full-rate load into the source (floor: {load['seconds']:.1f} s, {load['rate']:,.0f} routes/s): target done {float(trail):.2f} s after the source;"
      f" lag p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms ({lag['samples']:,} samples);"
      f" daemon CPU {float(lcpu):.1f} s (copy thread {float(lccpu):.1f} s) = {float(lcpu)/n*1e6:.2f} us per route (both mirrors + copy)")
print(f"repair after a foreign delete: {rep}")
EOF
done
