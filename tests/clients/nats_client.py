#!/usr/bin/env python3
"""nats-py, driven by tests/tests/nats.rs: prints every message of a JetStream stream
as a JSON line {"subject", "stream_seq", "msg"} and exits once it has read them all.

  nats_client.py URL STREAM
  nats_client.py URL STREAM purge SEQ
      removes every message before stream sequence SEQ (as retention would)
"""
import asyncio
import json
import sys

import nats


async def purge(url, stream, seq):
    nc = await nats.connect(url)
    ok = await nc.jetstream().purge_stream(stream, seq=seq)
    print(json.dumps({"purged": ok}), flush=True)
    await nc.close()


async def main(url, stream):
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    last = info.state.last_seq
    if last == 0:
        await nc.close()
        return
    sub = await js.subscribe("route-mirror.>",
                             ordered_consumer=True,
                             deliver_policy=nats.js.api.DeliverPolicy.ALL)
    while True:
        m = await sub.next_msg(timeout=10)
        print(json.dumps({"subject": m.subject, "stream_seq": m.metadata.sequence.stream,
                          "msg": json.loads(m.data)}), flush=True)
        if m.metadata.sequence.stream >= last:
            break
    await nc.close()


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[3] == "purge":
        asyncio.run(purge(sys.argv[1], sys.argv[2], int(sys.argv[4])))
    else:
        asyncio.run(main(sys.argv[1], sys.argv[2]))
