#!/usr/bin/env python3
"""pygnmi, driven by tests/tests/gnmi.rs: one gNMI operation per run, results as JSON
lines on stdout (each with "t", the wall-clock time it arrived).

  gnmi_client.py ADDR caps
  gnmi_client.py ADDR get PATH [ENCODING]
  gnmi_client.py ADDR getcount PATH [ENCODING]
      a get that prints only the entry prefixes it read (a large selection)
  gnmi_client.py ADDR once PATH [ENCODING]
  gnmi_client.py ADDR stream PATH SECONDS [PAUSE_SECONDS]
      prints every response until SECONDS pass; with PAUSE_SECONDS it reads nothing
      for that long after the first sync_response (a slow collector).
  gnmi_client.py ADDR sample PATH MS SECONDS [suppress]
      STREAM with SAMPLE every MS milliseconds (suppress_redundant with "suppress")
  gnmi_client.py ADDR slow PATH PAUSE_SECONDS SECONDS
      a collector that stops reading: pygnmi's own subscriber drains the stream in a
      thread, so this uses the gNMI stub pygnmi ships, reads up to the first
      sync_response, reads nothing for PAUSE_SECONDS, then prints what follows.

GNMI_TARGET, when set, is the gNMI target (prefix.target) of get and subscribe: the
namespace to read when the daemon mirrors several. GNMI_MAX_RECEIVE, when set, is the
client's gRPC receive limit in bytes (grpc.max_receive_message_length; default 4 MiB).
A failed get prints {"error": message, "code": gRPC status code name}.
"""
import json
import os
import sys
import time

from pygnmi.client import gNMIclient


def out(obj):
    obj["t"] = time.time()
    print(json.dumps(obj, default=str), flush=True)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    op = sys.argv[2]
    # TLS when GNMI_TLS_ROOT is set (the CA to trust); GNMI_TLS_CERT/GNMI_TLS_KEY add a
    # client certificate.
    tls = {}
    if os.environ.get("GNMI_TLS_ROOT"):
        if os.environ.get("GNMI_TLS_CERT"):
            tls = {"path_root": os.environ["GNMI_TLS_ROOT"], "path_cert": os.environ["GNMI_TLS_CERT"],
                   "path_key": os.environ["GNMI_TLS_KEY"]}
        else:
            tls = {"path_cert": os.environ["GNMI_TLS_ROOT"]}
    target = os.environ.get("GNMI_TARGET") or None
    options = []
    if os.environ.get("GNMI_MAX_RECEIVE"):
        options.append(("grpc.max_receive_message_length", int(os.environ["GNMI_MAX_RECEIVE"])))
    with gNMIclient(target=(host, int(port)), insecure=not tls, grpc_options=options,
                    gnmi_timeout=float(os.environ.get("GNMI_TIMEOUT", "10")), **tls) as gc:
        if op == "caps":
            out(gc.capabilities())
        elif op == "get":
            enc = sys.argv[4] if len(sys.argv) > 4 else None
            try:
                out({"get": gc.get(path=[sys.argv[3]], encoding=enc, target=target)})
            except Exception as e:  # a gNMI error status, e.g. NOT_FOUND
                orig = getattr(e, "orig_exc", None)
                code = orig.code().name if hasattr(orig, "code") else None
                out({"error": str(e), "code": code})
        elif op == "getcount":
            enc = sys.argv[4] if len(sys.argv) > 4 else None
            try:
                r = gc.get(path=[sys.argv[3]], encoding=enc, target=target)
            except Exception as e:
                orig = getattr(e, "orig_exc", None)
                out({"error": str(e), "code": orig.code().name if hasattr(orig, "code") else None})
                return
            prefixes = set()
            for n in r.get("notification", []):
                for u in n.get("update") or []:
                    if u["path"].endswith("/state/prefix") or u["path"] == "state/prefix":
                        prefixes.add(u["val"])
            out({"notifications": len(r.get("notification", [])), "prefixes": sorted(prefixes)})
        elif op == "once":
            enc = sys.argv[4] if len(sys.argv) > 4 else "json"
            sub = {"subscription": [{"path": sys.argv[3]}], "mode": "once", "encoding": enc}
            for m in gc.subscribe2(subscribe=sub, target=target):
                out(m)
            out({"end": True})
        elif op == "stream":
            path, seconds = sys.argv[3], float(sys.argv[4])
            pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
            sub = {"subscription": [{"path": path, "mode": "on_change"}], "mode": "stream",
                   "encoding": "json"}
            s = gc.subscribe_stream(subscribe=sub, target=target)
            end = time.time() + seconds
            paused = False
            while time.time() < end:
                try:
                    m = s.get_update(timeout=max(0.05, end - time.time()))
                except Exception:
                    break
                out(m)
                if m.get("sync_response") and pause and not paused:
                    paused = True
                    out({"paused": pause})
                    time.sleep(pause)
            out({"end": True})
            s.close()
        elif op == "poll":
            # POLL: the list, then one Poll per "poll" line on stdin; each answer printed.
            sub = {"subscription": [{"path": sys.argv[3]}], "mode": "poll", "encoding": "json"}
            s = gc.subscribe_poll(subscribe=sub)
            for line in sys.stdin:
                out({"poll": s.get_update(timeout=10)})
            out({"end": True})
            s.close()
        elif op == "sample":
            # STREAM with SAMPLE every MS milliseconds, for SECONDS; a 6th argument
            # "suppress" sets suppress_redundant.
            path, ms, seconds = sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
            suppress = len(sys.argv) > 6 and sys.argv[6] == "suppress"
            sub = {"subscription": [{"path": path, "mode": "sample", "sample_interval": ms * 1000000,
                                     "suppress_redundant": suppress}],
                   "mode": "stream", "encoding": "json"}
            s = gc.subscribe_stream(subscribe=sub)
            end = time.time() + seconds
            while time.time() < end:
                try:
                    out(s.get_update(timeout=max(0.05, end - time.time())))
                except Exception:
                    break
            out({"end": True})
            s.close()
        elif op == "slow":
            slow(sys.argv[1], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
        else:
            raise SystemExit(f"unknown op {op}")


def slow(addr, path, pause, seconds):
    import grpc
    from pygnmi.create_gnmi_path import gnmi_path_generator
    from pygnmi.spec.v080 import gnmi_pb2
    from pygnmi.spec.v080.gnmi_pb2_grpc import gNMIStub

    chan = grpc.insecure_channel(addr)
    req = gnmi_pb2.SubscribeRequest(subscribe=gnmi_pb2.SubscriptionList(
        subscription=[gnmi_pb2.Subscription(path=gnmi_path_generator(path),
                                            mode=gnmi_pb2.ON_CHANGE)],
        mode=gnmi_pb2.SubscriptionList.STREAM, encoding=gnmi_pb2.JSON))
    stop = __import__("threading").Event()

    def reqs():
        yield req
        stop.wait()

    it = gNMIStub(chan).Subscribe(reqs())
    end = time.time() + seconds
    paused = False
    for r in it:
        kind = r.WhichOneof("response")
        n = r.update
        out({"kind": kind, "deletes": [gnmi_path_str(p) for p in n.delete],
             "updates": len(n.update)})
        if kind == "sync_response" and not paused:
            paused = True
            out({"paused": pause})
            time.sleep(pause)
        if time.time() > end:
            break
    stop.set()
    out({"end": True})


def gnmi_path_str(p):
    return "/".join(e.name + "".join(f"[{k}={v}]" for k, v in sorted(e.key.items()))
                    for e in p.elem)


if __name__ == "__main__":
    main()
