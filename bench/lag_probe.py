#!/usr/bin/env python3
"""Kernel->mirror lag seen from outside the daemon, the same way for both sources.

Run inside the mirrored namespace (`ip netns exec NS python3 bench/lag_probe.py SOCK`).
Every INTERVAL seconds it adds one blackhole /32 route (100.64.0.0/10, one new prefix
each time) with its own netlink request, then asks the daemon (`show PREFIX` on the
control socket, which reads the mirror without waiting for it to catch up) until the
route is there. lag = time the route appeared - time just before the request was sent,
so it includes the kernel's insert and up to one control-socket round trip plus one
pause between queries (~0.3-0.5 ms together: the resolution of this probe). The eBPF source also measures lag itself, exactly, from the
filter's timestamps (`stats` ring.lag); this probe is the netlink source's only measure.

Stops after COUNT samples or when the file STOP exists; prints one JSON line:
{"samples": n, "p50_us": .., "p90_us": .., "p99_us": .., "max_us": .., "timeouts": n}
Usage: lag_probe.py SOCK [--count N] [--interval S] [--stop FILE] [--offset K]
"""

import argparse
import json
import os
import socket
import struct
import time

NLMSG_ERROR = 2
RTM_NEWROUTE = 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTA_DST, RTA_TABLE = 1, 15
RTN_BLACKHOLE, RTPROT_STATIC = 6, 4


def add_route(nl, seq, addr):
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 254, RTPROT_STATIC, 0,
                       RTN_BLACKHOLE, 0)
    body += struct.pack("=HH", 8, RTA_DST) + socket.inet_aton(addr)
    body += struct.pack("=HHI", 8, RTA_TABLE, 254)
    hdr = struct.pack("=IHHII", 16 + len(body), RTM_NEWROUTE,
                      NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE, seq, 0)
    t0 = time.monotonic_ns()
    nl.send(hdr + body)
    reply = nl.recv(65536)
    _, ty, _, _, _ = struct.unpack("=IHHII", reply[:16])
    if ty == NLMSG_ERROR:
        (err,) = struct.unpack("=i", reply[16:20])
        if err != 0:
            raise OSError(-err, f"adding {addr}/32: {os.strerror(-err)}")
    return t0


def present(sock_path, prefix):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    s.sendall(json.dumps({"cmd": "show", "prefix": prefix, "table": 254}).encode() + b"\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return b'"item"' in data


def pct(xs, q):
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sock")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--stop", default=None)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0)
    # Pause between queries: keeps the probe's own load on the daemon small (a query
    # takes ~0.1-0.3 ms); the lag is known to within a query plus this pause.
    ap.add_argument("--poll", type=float, default=0.0002)
    a = ap.parse_args()
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    nl.bind((0, 0))
    lags, timeouts = [], 0
    for i in range(a.count):
        if a.stop and os.path.exists(a.stop):
            break
        k = a.offset + i
        addr = f"100.{64 + (k >> 16) % 64}.{(k >> 8) & 255}.{k & 255}"
        t0 = add_route(nl, i + 1, addr)
        while not present(a.sock, f"{addr}/32"):
            if time.monotonic_ns() - t0 > a.timeout * 1e9:
                timeouts += 1
                break
            time.sleep(a.poll)
        else:
            lags.append((time.monotonic_ns() - t0) / 1000.0)
        time.sleep(a.interval)
    print(json.dumps({
        "samples": len(lags),
        "p50_us": round(pct(lags, 0.5), 1),
        "p90_us": round(pct(lags, 0.9), 1),
        "p99_us": round(pct(lags, 0.99), 1),
        "max_us": round(max(lags) if lags else 0.0, 1),
        "timeouts": timeouts,
    }))


if __name__ == "__main__":
    main()
