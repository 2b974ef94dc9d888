"""Broker ceiling, subscriber side: count readings delivered on one topic at QoS 1, print when all arrived.

Run as a separate process (like a service): `python -m tests.bench._subscriber <host> <port> <topic> <readings>`.
Prints `READY` after the subscription is acknowledged and `DONE <epoch seconds of the last message>` at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiomqtt
import orjson


async def main(host: str, port: int, topic: str, expected: int) -> None:
    received = 0
    async with aiomqtt.Client(
        host, port, identifier=f"gf-bench-sub-{time.time_ns()}", max_queued_incoming_messages=0
    ) as client:
        await client.subscribe(topic, qos=1)
        print("READY", flush=True)
        async for message in client.messages:
            # Parse like a consumer would, so the ceiling includes decoding the payload.
            received += len(orjson.loads(message.payload)["readings"])
            if received >= expected:
                print(f"DONE {time.time()}", flush=True)
                return


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
