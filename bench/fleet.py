#!/usr/bin/env python3
"""Fleet simulation and export measurements (issue 16). Run as root, under
`flock /work/locks/heavy` on a shared machine:

  sudo bench/fleet.py fleet  [--routers 20] [--routes 2000] [--rounds 5] [--churn 400] [--steady 20]
  sudo bench/fleet.py gnmi   [--v4 v4-1m] [--v6 v6-230k] [--churn 20000] [--steady 20] [--subscribers 0,1,10]
  sudo bench/fleet.py nats   [--v4 v4-1m] [--v6 v6-230k] [--churn 20000] [--snapshot-interval 30]

fleet: ROUTERS namespaces (each a veth pair and ROUTES IPv4 + ROUTES/4 IPv6 routes), one
  daemon mirroring all of them (--netns x ROUTERS) and publishing to one `nats-server -js`
  on loopback. Each round churns CHURN random adds/deletes per router, waits until the
  daemon is in sync, then compares every router's FIB as `route-mirror fleet dump` holds it
  with that namespace's kernel tables (`ip -j route show table all`, both families): the
  checkpoint must show 0 differences. Then the end-to-end lag kernel -> consumer: one
  route added in a random namespace at a time, timed until `route-mirror fleet follow`
  shows that router's copy moved (p50/p99 over LAG_SAMPLES). With --steady, before the
  lag: every router churning at once for that long, the changes/s the kernels took and
  the consumer applied, the daemon's CPU, and when the consumer caught up. Last, a late
  consumer: a fresh `route-mirror fleet routers` replays the retained stream (the daemon
  snapshots every SNAPSHOT_INTERVAL s, 0: only at start), timed until caught up, and a
  fresh `fleet dump` is compared with every kernel (0 differences wanted).

gnmi: one namespace with the v4 and v6 route sets, a daemon with --gnmi-listen: the time
  and bytes of a Subscribe ONCE snapshot of every entry (gNMI stub from pygnmi's package,
  protobuf sizes summed), then CHURN route changes with 0, 1 and 10 STREAM subscribers
  attached: the daemon's CPU seconds, peak RSS and the changes/s the subscribers saw.
  With --steady, after each burst: sustained churn for that long (the steady update
  throughput to 0, 1, 10 subscribers, the daemon's CPU share); with 1 subscriber, the
  lag kernel -> subscriber of LAG_SAMPLES single route adds (p50/p99). --subscribers
  picks the passes (e.g. `1` with --steady 0: only the lag).

nats: one namespace with the v4 and v6 route sets, a daemon with --nats-url publishing
  to `nats-server -js` on loopback: the time until its first snapshot is in the stream,
  then a late consumer (`fleet routers` from scratch: replays the retained stream) timed
  until caught up and its `fleet dump` compared with the kernel; then CHURN route
  changes and the next periodic snapshot, and the same late consumer again.

Prints a markdown table. Needs nats-server and the test venv (`cargo xtask test` makes
target/test-venv with pygnmi and nats-py). ROUTE_MIRROR_BIN picks the daemon binary
(default target/release/route-mirror).
"""
import argparse
import gzip
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROUTE_MIRROR_BIN", os.path.join(REPO, "target/release/route-mirror"))
PY = os.environ.get("ROUTE_MIRROR_TEST_PYTHON", os.path.join(REPO, "target/test-venv/bin/python"))
PREFIX = f"rmfleet{os.getpid()}"


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Cleanup:
    def __init__(self):
        self.procs, self.netns, self.dirs = [], [], []

    def __call__(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        for n in self.netns:
            sh("ip", "netns", "del", n, check=False)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


def make_ns(name, clean):
    sh("ip", "netns", "add", name)
    clean.netns.append(name)
    ip = lambda *a: sh("ip", "-n", name, *a)
    ip("link", "set", "lo", "up")
    ip("link", "add", "veth1", "type", "veth", "peer", "name", "veth1p")
    ip("link", "set", "veth1p", "up")
    ip("link", "set", "veth1", "up")
    ip("addr", "add", "198.18.1.1/24", "dev", "veth1")
    ip("addr", "add", "2001:2:0:1::1/64", "dev", "veth1", "nodad")


def batch(ns, lines):
    subprocess.run(["ip", "-force", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                   text=True, check=True, capture_output=True)


def rand_v4(rng):
    """A unicast prefix outside 100/8, 127/8 and 198/8 (the bench's own addresses)."""
    n = rng.randint(16, 24)
    first = rng.choice([o for o in range(1, 224) if o not in (100, 127, 198)])
    a = (first << 24) | rng.getrandbits(24)
    return str(ipaddress.ip_network((a & (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF, n)))


def rand_v6(rng):
    n = rng.randint(32, 64)
    a = (0x2001 << 112) | (rng.getrandbits(96) << 16)
    return str(ipaddress.ip_network((a & ((1 << 128) - (1 << (128 - n))), n)))


def kernel_routes(ns):
    out = set()
    for fam in ("-4", "-6"):
        for r in json.loads(sh("ip", "-n", ns, "-j", fam, "route", "show", "table", "all").stdout):
            t = r.get("table", "main")
            t = {"main": 254, "local": 255, "default": 253}.get(t, t)
            dst = r["dst"]
            if dst == "default":
                dst = "0.0.0.0/0" if fam == "-4" else "::/0"
            elif "/" not in dst:
                dst += "/32" if fam == "-4" else "/128"
            kind = r.get("type", "unicast")
            out.add((int(t), str(ipaddress.ip_network(dst, strict=False)), int(r.get("metric", 0)), kind))
    return out


def consumer_routes(url):
    d = json.loads(sh(BIN, "fleet", "--nats-url", url, "dump").stdout)
    return {router: (v["state"], {(r["table"], r["prefix"], r["metric"], r["type"]) for r in v["routes"]})
            for router, v in d.items()}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def start_nats(work, clean):
    """`nats-server -js` on loopback, storing in WORK: its URL and monitoring port."""
    port, mon = free_port(), free_port()
    nats = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-m", str(mon),
                             "-sd", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clean.procs.append(nats)
    return f"nats://127.0.0.1:{port}", mon


def stream_size(mon):
    """Messages and bytes JetStream retains (the server's monitoring endpoint)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{mon}/jsz", timeout=5) as r:
        v = json.load(r)
    return v.get("messages", 0), v.get("bytes", 0)


def late_consumer(url, mon, want):
    """A consumer joining now: `fleet routers` from scratch (it replays the retained
    stream) timed until caught up, then a fresh `fleet dump` compared with WANT, the
    kernels' routes per router. Returns (seconds, messages, bytes, routes, differences,
    routers not current)."""
    msgs, size = stream_size(mon)
    t = time.time()
    routers = [json.loads(l) for l in sh(BIN, "fleet", "--nats-url", url, "routers").stdout.splitlines()]
    took = time.time() - t
    got = consumer_routes(url)
    diffs = stale = 0
    for r, routes in want.items():
        state, have = got.get(r, ("missing", set()))
        stale += state != "current"
        diffs += len(have ^ routes)
    return took, msgs, size, sum(r["routes"] for r in routers), diffs, stale


def late_row(label, late):
    took, msgs, size, routes, diffs, stale = late
    return (f"late consumer: {label}", f"caught up in **{took:.2f} s** replaying {msgs:,} messages "
            f"({size / 1e6:.1f} MB), {routes:,} routes", f"{diffs} differences, {stale} routers not current")


def fleet(args, clean):
    rng = random.Random(16)
    work = tempfile.mkdtemp(prefix="rmfleet")
    clean.dirs.append(work)
    url, mon = start_nats(work, clean)
    names = [f"{PREFIX}-{i}" for i in range(args.routers)]
    installed = {}
    for n in names:
        make_ns(n, clean)
        v4 = {rand_v4(rng) for _ in range(args.routes)}
        v6 = {rand_v6(rng) for _ in range(args.routes // 4)}
        batch(n, [f"route replace {p} via 198.18.1.2" for p in v4] +
              [f"route replace {p} via 2001:2:0:1::2" for p in v6])
        installed[n] = v4 | v6
    cmd = [BIN, "run", "--config", "/dev/null", "--source", "netlink", "--nats-url", url,
           "--nats-host", "bench", "--nats-snapshot-interval", str(args.snapshot_interval)]
    for n in names:
        cmd += ["--netns", n]
    log = open(os.path.join(work, "daemon.log"), "w")
    t0 = time.time()
    daemon = subprocess.Popen(cmd, stdout=log, stderr=log)
    clean.procs.append(daemon)
    sock = lambda n: f"/run/route-mirror/{n}.sock"
    for n in names:
        while sh(BIN, "--socket", sock(n), "sync", check=False).returncode != 0:
            time.sleep(0.2)
    print(f"daemon synced {len(names)} namespaces in {time.time() - t0:.1f}s", file=sys.stderr)

    def checkpoint(label):
        for n in names:
            sh(BIN, "--socket", sock(n), "sync")
        deadline = time.time() + 60
        while True:
            diffs, stale = 0, 0
            got = consumer_routes(url)
            for n in names:
                state, routes = got.get(f"bench/{n}", ("missing", set()))
                want = kernel_routes(n)
                stale += state != "current"
                diffs += len(routes ^ want)
            if (diffs == 0 and stale == 0) or time.time() > deadline:
                return diffs, stale, sum(len(kernel_routes(n)) for n in names)
            time.sleep(0.5)

    rows = []
    for rnd in range(args.rounds):
        t = time.time()
        total = 0
        for n in names:
            cur = installed[n]
            dels = rng.sample(sorted(cur), min(len(cur), args.churn // 2))
            adds = {rand_v4(rng) for _ in range(args.churn // 2)}
            batch(n, [f"route del {p}" for p in dels] +
                  [f"route replace {p} via 198.18.1.2" for p in adds])
            cur.difference_update(dels)
            cur |= adds
            total += len(dels) + len(adds)
        applied = time.time() - t
        diffs, stale, kernel = checkpoint(rnd)
        took = time.time() - t
        rows.append((rnd, total, applied, took, kernel, diffs, stale))
        print(f"round {rnd}: {total} changes, consumer = kernel after {took:.2f}s: "
              f"{diffs} differences, {stale} stale routers", file=sys.stderr)

    # Lag kernel -> consumer.
    follow = subprocess.Popen([BIN, "fleet", "--nats-url", url, "follow"], stdout=subprocess.PIPE,
                              text=True, bufsize=1)
    clean.procs.append(follow)
    seqs, lock = {}, threading.Condition()
    applied_n = [0]

    def reader():
        for line in follow.stdout:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            with lock:
                seqs[v["router"]] = (v["seq"], time.time())
                applied_n[0] += 1
                lock.notify_all()

    threading.Thread(target=reader, daemon=True).start()
    time.sleep(3)  # caught up with the retained stream
    steady = None
    if args.steady:
        # Every router churning at once for args.steady seconds (rounds of 200 replaces
        # and their deletes per router, routers in turn): the rate the kernels took, the
        # daemon's CPU share, the changes the consumer applied, and how long after the
        # churn it caught up (every router's seq = the daemon's).
        with lock:
            n0 = applied_n[0]
        cpu0, _, _ = proc_stat(daemon.pid)
        t0 = time.time()
        changes = 0
        while time.time() - t0 < args.steady:
            for n in names:
                ps = sorted({rand_v4(rng) for _ in range(100)})
                batch(n, [f"route replace {p} via 198.18.1.2" for p in ps] + [f"route del {p}" for p in ps])
                changes += 2 * len(ps)
        took = time.time() - t0
        for n in names:
            sh(BIN, "--socket", sock(n), "sync")
        cpu1, rss, hwm = proc_stat(daemon.pid)
        # Caught up: no change applied by the consumer for 2 s.
        while True:
            with lock:
                last = max((v[1] for v in seqs.values()), default=t0)
            if time.time() - last >= 2:
                break
            time.sleep(0.2)
        with lock:
            got = applied_n[0] - n0
        steady = (changes, took, cpu1 - cpu0, got, last - t0 - took, rss, hwm)
        print(f"steady: {steady}", file=sys.stderr, flush=True)
    lags = []
    for i in range(args.lag_samples):
        n = rng.choice(names)
        r = f"bench/{n}"
        with lock:
            before = seqs.get(r, (0, 0))[0]
        p = f"100.{64 + i // 250}.{i % 250}.0/24"
        t = time.time()
        sh("ip", "-n", n, "route", "add", p, "via", "198.18.1.2")
        with lock:
            ok = lock.wait_for(lambda: seqs.get(r, (0, 0))[0] > before, timeout=5)
            got = seqs.get(r, (0, t))[1]
        if ok:
            lags.append(got - t)
    follow.terminate()
    late = None
    if args.late:
        for n in names:
            sh(BIN, "--socket", sock(n), "sync")
        late = late_consumer(url, mon, {f"bench/{n}": kernel_routes(n) for n in names})
        print(f"late: {late}", file=sys.stderr, flush=True)
    print("\n| round | changes (all routers) | kernel applied (s) | consumer = kernel after (s) | kernel routes | differences | stale routers |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]} | {r[5]} | {r[6]} |")
    if steady:
        changes, took, cpu, got, after, rss, hwm = steady
        print(f"steady churn over {len(names)} routers: {changes:,} route changes in {took:.1f} s "
              f"({changes / took:,.0f}/s through ip -batch); daemon CPU {cpu:.2f} s "
              f"({100 * cpu / took:.0f}% of a core), RSS {rss / 1024:.0f} MiB (peak {hwm / 1024:.0f} MiB); "
              f"the consumer applied {got:,} changes ({got / took:,.0f}/s), the last {max(0.0, after):.2f} s "
              f"after the churn ended")
    if lags:
        print(f"lag kernel -> consumer over {len(lags)} single changes: p50 {pct(lags, 50) * 1000:.1f} ms, "
              f"p99 {pct(lags, 99) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms")
    if late:
        print(" | ".join(late_row(f"{len(names)} routers, snapshot interval {args.snapshot_interval:g} s", late)))


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    cpu = (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        st = {l.split(":")[0]: l.split()[1] for l in f if l.startswith(("VmRSS:", "VmHWM:"))}
    return cpu, int(st["VmRSS"]), int(st["VmHWM"])


GNMI_CLIENT = r"""
import sys, time, grpc
from pygnmi.create_gnmi_path import gnmi_path_generator
from pygnmi.spec.v080 import gnmi_pb2
from pygnmi.spec.v080.gnmi_pb2_grpc import gNMIStub
addr, mode = sys.argv[1], sys.argv[2]
ch = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 1 << 30)])
m = gnmi_pb2.SubscriptionList.ONCE if mode == "once" else gnmi_pb2.SubscriptionList.STREAM
req = gnmi_pb2.SubscribeRequest(subscribe=gnmi_pb2.SubscriptionList(
    subscription=[gnmi_pb2.Subscription(path=gnmi_path_generator("/network-instances"),
                                        mode=gnmi_pb2.ON_CHANGE)], mode=m, encoding=gnmi_pb2.PROTO))
import threading
stop = threading.Event()
def reqs():
    yield req
    stop.wait()
t0 = time.time(); size = 0; entries = 0; msgs = 0; synced = None; after = 0
for r in gNMIStub(ch).Subscribe(reqs()):
    msgs += 1
    size += r.ByteSize()
    if r.HasField("sync_response"):
        synced = time.time() - t0
        print(f"SYNC {synced:.3f} {size} {entries} {msgs}", flush=True)
        if mode == "once":
            break
        continue
    n = r.update
    if synced is None:
        entries += sum(1 for u in n.update if u.path.elem[-1].name == "prefix" and "entry" in u.path.elem[1].name)
    else:
        after += len(n.update) + len(n.delete)
        print(f"UPD {after}", flush=True)
stop.set()
"""


ARRIVED = threading.Condition()


def quiet(seen, secs=2, limit=120):
    """Waits until every subscriber has been quiet for SECS; the last arrival."""
    end = time.time() + limit
    while time.time() < end:
        last = max(sl[1] for sl in seen)
        if time.time() - last > secs:
            break
        time.sleep(0.2)
    return max(sl[1] for sl in seen)


def steady_gnmi(args, n, work, d, seen, subs):
    """Sustained churn for args.steady seconds (rounds of 500 route replaces and their
    deletes, back to back through ip -batch): the rate the kernel took, what every
    subscriber received, the daemon's CPU share, and how long after the churn the last
    update arrived."""
    rng = random.Random(11)
    got0 = [sl[0] for sl in seen]
    cpu0, _, _ = proc_stat(d.pid)
    t0 = time.time()
    changes = 0
    while time.time() - t0 < args.steady:
        ps = sorted({rand_v4(rng) for _ in range(500)})
        batch(n, [f"route replace {p} via 198.18.2.2" for p in ps] + [f"route del {p}" for p in ps])
        changes += 2 * len(ps)
    applied = time.time() - t0
    sh(BIN, "--socket", os.path.join(work, "rm.sock"), "sync")
    cpu1, rss, hwm = proc_stat(d.pid)
    last = quiet(seen) if seen else t0 + applied
    got = [sl[0] - g for sl, g in zip(seen, got0)]
    st = json.loads(sh(BIN, "--socket", os.path.join(work, "rm.sock"), "stats", "--json",
                       check=False).stdout or "{}").get("gnmi", {})
    recv = (f"each subscriber received {min(got):,}-{max(got):,} leaves ({min(got) / applied:,.0f}/s), "
            f"the last {max(0.0, last - t0 - applied):.2f} s after the churn ended; "
            f"overflows {st.get('overflows')}") if seen else "no subscriber"
    return (f"steady churn, {subs} subscribers", f"{changes:,} route changes in {applied:.1f} s "
            f"({changes / applied:,.0f}/s through ip -batch); {recv}",
            f"daemon CPU {cpu1 - cpu0:.2f} s ({100 * (cpu1 - cpu0) / applied:.0f}% of a core)",
            f"RSS {rss / 1024:.0f} MiB (peak {hwm / 1024:.0f} MiB)")


def lag_gnmi(args, n, seen):
    """Kernel -> gNMI subscriber: one route added at a time, timed from just before
    `ip route add` until the subscriber's stream delivered its update."""
    lags = []
    for i in range(args.lag_samples):
        with ARRIVED:
            before = seen[0][0]
        p = f"100.{64 + i // 250}.{i % 250}.0/24"
        t = time.time()
        sh("ip", "-n", n, "route", "add", p, "via", "198.18.2.2")
        with ARRIVED:
            if ARRIVED.wait_for(lambda: seen[0][0] > before, timeout=5):
                lags.append(seen[0][1] - t)
        time.sleep(0.02)
    return ("lag kernel -> gNMI subscriber", f"{len(lags)} single route adds: p50 {pct(lags, 50) * 1000:.1f} ms, "
            f"p99 {pct(lags, 99) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms", "", "")


def table_ns(args, clean, suffix):
    """A namespace holding the shared v4 and v6 route sets (their next hops on veth1
    and veth2): its name."""
    shared = os.environ.get("ROUTE_MIRROR_SHARED", os.path.join(REPO, "..", "shared"))
    if not os.path.isdir(os.path.join(shared, "routes")):
        shared = "/work/shared"
    n = f"{PREFIX}-{suffix}"
    make_ns(n, clean)
    sh("ip", "-n", n, "link", "add", "veth2", "type", "veth", "peer", "name", "veth2p")
    sh("ip", "-n", n, "link", "set", "veth2p", "up")
    sh("ip", "-n", n, "link", "set", "veth2", "up")
    sh("ip", "-n", n, "addr", "add", "198.18.2.1/24", "dev", "veth2")
    sh("ip", "-n", n, "addr", "add", "2001:2:0:2::1/64", "dev", "veth2", "nodad")
    for b in (args.v4, args.v6):
        if b:
            data = gzip.open(os.path.join(shared, "routes", f"{b}.batch.gz")).read()
            subprocess.run(["ip", "-n", n, "-batch", "-"], input=data, check=True, capture_output=True)
    return n


def gnmi(args, clean):
    work = tempfile.mkdtemp(prefix="rmgnmi")
    clean.dirs.append(work)
    n = table_ns(args, clean, "g")
    client = os.path.join(work, "client.py")
    open(client, "w").write(GNMI_CLIENT)
    results = []
    for subs in args.subscribers:
        port = free_port()
        addr = f"127.0.0.1:{port}"
        log = open(os.path.join(work, f"daemon{subs}.log"), "w")
        d = subprocess.Popen([BIN, "run", "--config", "/dev/null", "--netns", n, "--source", "netlink",
                              "--socket", os.path.join(work, "rm.sock"), "--gnmi-listen", addr,
                              "--gnmi-insecure"], stdout=log, stderr=log)
        clean.procs.append(d)
        while sh(BIN, "--socket", os.path.join(work, "rm.sock"), "sync", check=False).returncode != 0:
            time.sleep(0.5)
        if subs == args.subscribers[0]:
            # The snapshot of every entry over gNMI (ONCE, PROTO).
            t = time.time()
            _, rss0, _ = proc_stat(d.pid)
            out = sh(PY, client, addr, "once").stdout.split()
            time.sleep(1)
            _, rss, hwm = proc_stat(d.pid)
            results.append(("ONCE snapshot", f"{float(out[1]):.2f} s", f"{int(out[2]) / 1e6:.1f} MB",
                            f"{int(out[3]):,} entries in {int(out[4]):,} responses; daemon RSS "
                            f"{rss0 / 1024:.0f} MiB before, {rss / 1024:.0f} MiB after, peak {hwm / 1024:.0f} MiB"))
            print(results[-1], file=sys.stderr, flush=True)
        readers = []
        for _ in range(subs):
            p = subprocess.Popen([PY, client, addr, "stream"], stdout=subprocess.PIPE, text=True)
            clean.procs.append(p)
            readers.append(p)
        t_sub = time.time()
        synced = 0
        for p in readers:  # each past its initial snapshot (or failed: its output ends)
            for line in p.stdout:
                if line.startswith("SYNC"):
                    synced += 1
                    break
        sub_took = time.time() - t_sub
        _, _, hwm_sub = proc_stat(d.pid)
        # Drain every reader on its own thread (a full pipe would stall the client and
        # make the server resnapshot it): the time its last update arrived.
        seen = [[0, 0.0] for _ in readers]

        def drain(p, slot):
            for line in p.stdout:
                if line.startswith("UPD"):
                    with ARRIVED:
                        slot[0], slot[1] = int(line.split()[1]), time.time()
                        ARRIVED.notify_all()
        for p, slot in zip(readers, seen):
            threading.Thread(target=drain, args=(p, slot), daemon=True).start()
        cpu0, _, _ = proc_stat(d.pid)
        rng = random.Random(7)
        prefixes = sorted({rand_v4(rng) for _ in range(args.churn // 2)})
        t = time.time()
        batch(n, [f"route replace {p} via 198.18.2.2" for p in prefixes])
        batch(n, [f"route del {p}" for p in prefixes])
        sh(BIN, "--socket", os.path.join(work, "rm.sock"), "sync")
        took = time.time() - t
        # Until every subscriber has been quiet for 2 s (at most 120 s).
        end = time.time() + 120
        while readers and time.time() < end:
            last = max(sl[1] for sl in seen)
            if last and time.time() - last > 2 and all(sl[0] for sl in seen):
                break
            time.sleep(0.2)
        delivered = (max(sl[1] for sl in seen) - t) if readers else took
        cpu1, rss, hwm = proc_stat(d.pid)
        got = f", each got {min(sl[0] for sl in seen):,}-{max(sl[0] for sl in seen):,} leaves" if readers else ""
        snap = (f"{synced}/{subs} connected and synced their full snapshots in {sub_took:.1f} s "
                f"(daemon peak RSS {hwm_sub / 1024:.0f} MiB); ") if readers else ""
        unsent = json.loads(sh(BIN, "--socket", os.path.join(work, "rm.sock"), "stats", "--json",
                               check=False).stdout or "{}").get("gnmi", {}).get("unsent_max")
        results.append((f"{subs} STREAM subscribers", f"{snap}{args.churn} changes applied in {took:.2f} s, "
                        f"all delivered in {delivered:.2f} s{got}",
                        f"daemon CPU {cpu1 - cpu0:.2f} s",
                        f"RSS {rss / 1024:.0f} MiB (peak {hwm / 1024:.0f} MiB, unsent_max {unsent})"))
        print(results[-1], file=sys.stderr, flush=True)
        if args.steady:
            results.append(steady_gnmi(args, n, work, d, seen, subs))
            print(results[-1], file=sys.stderr, flush=True)
        if subs == 1 and args.lag_samples:
            results.append(lag_gnmi(args, n, seen))
            print(results[-1], file=sys.stderr, flush=True)
        for p in readers:
            p.kill()
        d.send_signal(signal.SIGTERM)
        d.wait(10)
    print("\n| measurement | | | |\n|---|---|---|---|")
    for r in results:
        print("| " + " | ".join(r) + " |")


def nats(args, clean):
    work = tempfile.mkdtemp(prefix="rmnats")
    clean.dirs.append(work)
    n = table_ns(args, clean, "n")
    url, mon = start_nats(work, clean)
    rm = lambda *a, **kw: sh(BIN, "--socket", os.path.join(work, "rm.sock"), *a, **kw)
    log = open(os.path.join(work, "daemon.log"), "w")
    t0 = time.time()
    d = subprocess.Popen([BIN, "run", "--config", "/dev/null", "--netns", n, "--source", "netlink",
                          "--socket", os.path.join(work, "rm.sock"), "--nats-url", url, "--nats-host", "bench",
                          "--nats-snapshot-interval", str(args.snapshot_interval)], stdout=log, stderr=log)
    clean.procs.append(d)
    while rm("sync", check=False).returncode != 0:
        time.sleep(0.5)
    synced = time.time() - t0

    def snapshots():
        return (json.loads(rm("stats", "--json").stdout).get("nats") or {}).get("snapshots", 0)

    def wait_snapshots(k, limit):
        end = time.time() + limit
        while snapshots() < k:
            if time.time() > end:
                sys.exit(f"no snapshot {k} within {limit} s")
            time.sleep(0.2)
        return time.time()

    first = wait_snapshots(1, 600) - t0
    cpu, rss, hwm = proc_stat(d.pid)
    want = lambda: {f"bench/{n}": kernel_routes(n)}
    rows = [("daemon start -> first snapshot in the stream", f"synced in {synced:.1f} s, snapshot "
             f"published {first:.1f} s after start", f"daemon CPU {cpu:.1f} s, RSS {rss / 1024:.0f} MiB "
             f"(peak {hwm / 1024:.0f} MiB)")]
    print(rows[-1], file=sys.stderr, flush=True)
    rows.append(late_row("1 snapshot", late_consumer(url, mon, want())))
    print(rows[-1], file=sys.stderr, flush=True)
    if args.churn and args.snapshot_interval:
        rng = random.Random(7)
        prefixes = sorted({rand_v4(rng) for _ in range(args.churn // 2)})
        k = snapshots()
        batch(n, [f"route replace {p} via 198.18.2.2" for p in prefixes])
        batch(n, [f"route del {p}" for p in prefixes[: len(prefixes) // 2]])
        rm("sync")
        wait_snapshots(k + 1, 2 * args.snapshot_interval + 600)
        rows.append(late_row(f"{k + 1} snapshots and {len(prefixes) + len(prefixes) // 2:,} changes "
                             "between them", late_consumer(url, mon, want())))
        print(rows[-1], file=sys.stderr, flush=True)
    d.send_signal(signal.SIGTERM)
    d.wait(10)
    print("\n| measurement | | |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["fleet", "gnmi", "nats"])
    ap.add_argument("--routers", type=int, default=20)
    ap.add_argument("--routes", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--churn", type=int, default=400)
    ap.add_argument("--lag-samples", type=int, default=200)
    ap.add_argument("--v4", default="v4-1m")
    ap.add_argument("--v6", default="v6-230k")
    ap.add_argument("--steady", type=float, default=20.0,
                    help="seconds of sustained churn (0: none)")
    ap.add_argument("--subscribers", default="0,1,10",
                    type=lambda v: [int(x) for x in v.split(",")],
                    help="gnmi: the STREAM subscriber counts to measure")
    ap.add_argument("--snapshot-interval", type=float, default=0,
                    help="the daemon's --nats-snapshot-interval (0: snapshots only at start)")
    ap.add_argument("--late", type=int, default=1,
                    help="fleet: measure a late consumer at the end (0: no)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    clean = Cleanup()
    try:
        {"fleet": fleet, "gnmi": gnmi, "nats": nats}[args.what](args, clean)
    finally:
        clean()


if __name__ == "__main__":
    main()
