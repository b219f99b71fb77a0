"""A delaying TCP proxy: models a remote object store in front of a local one.

Every chunk the client sends (an HTTP request, in practice) is held for `--latency-ms` before it is
forwarded, and with probability `--straggler-p` for `--straggler-ms` more (the slow tail that object
stores show). Responses flow back untouched. Listens on 127.0.0.1 only.
`python -m bench.proxy --listen 127.0.0.1:PORT --target 127.0.0.1:7480 --latency-ms 20`
"""
from __future__ import annotations

import argparse
import asyncio
import random

CHUNK = 1 << 16


async def pipe(reader, writer, delay=None):
    try:
        while data := await reader.read(CHUNK):
            if delay:
                await asyncio.sleep(delay())
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def serve(listen: str, target: str, latency_s: float, straggler_p: float, straggler_s: float, seed: int):
    rng = random.Random(seed)
    thost, tport = target.rsplit(":", 1)

    def request_delay() -> float:
        return latency_s + (straggler_s if rng.random() < straggler_p else 0.0)

    async def handle(creader, cwriter):
        try:
            sreader, swriter = await asyncio.open_connection(thost, int(tport))
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(pipe(creader, swriter, request_delay), pipe(sreader, cwriter))

    host, port = listen.rsplit(":", 1)
    assert host == "127.0.0.1", "the proxy listens on loopback only"
    server = await asyncio.start_server(handle, host, int(port))
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--straggler-p", type=float, default=0.01)
    p.add_argument("--straggler-ms", type=float, default=500.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    asyncio.run(serve(a.listen, a.target, a.latency_ms / 1e3, a.straggler_p, a.straggler_ms / 1e3, a.seed))


if __name__ == "__main__":
    main()
