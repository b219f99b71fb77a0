"""Retry and deadline figures of S3Store's read path, measured through the fault proxy (docs/RELIABILITY.md).

    python -m bench.fault_figures

Starts moto and a fault proxy on 127.0.0.1, reads one 100 KB range under each fault, prints one JSON
line per case: attempts the proxy saw, the gaps between them, and when the read gave up.
"""
from __future__ import annotations

import itertools
import json
import os
import time

from cachefs.devtools.devserver import MotoServer
from cachefs.devtools.faultproxy import Fault, FaultProxy

CASES = [
    ("500 always", Fault("error", ops="get"), {}),
    ("503 SlowDown always", Fault("error", ops="get", status=503, code="SlowDown"), {}),
    ("reset always", Fault("reset", ops="get"), {}),
    ("blackhole, read timeout 2 s, deadline 5 s", Fault("blackhole", ops="get", seconds=60),
     {"read_timeout": 2, "read_deadline": 5}),
    ("drip over 30 s (a piece every 1.5 s), read timeout 2 s, deadline 5 s", Fault("drip", ops="get", seconds=30),
     {"read_timeout": 2, "read_deadline": 5}),
]


def main() -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="AKIAFIGURES", AWS_SECRET_ACCESS_KEY="figures-not-a-secret",
                      AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
                      AWS_EC2_METADATA_DISABLED="true")
    import boto3

    from cachefs.store.s3 import S3Store
    with MotoServer() as moto, FaultProxy(moto.endpoint_url) as proxy:
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1")
        s3.create_bucket(Bucket="figures")
        s3.put_object(Bucket="figures", Key="k", Body=b"x" * 300_000)
        for name, fault, kw in CASES:
            store = S3Store("figures", endpoint_url=proxy.url, region="us-east-1", addressing_style="path",
                            max_attempts=4, **{"read_deadline": 60.0, **kw})
            proxy.requests.clear()
            proxy.add(fault)
            t0 = time.monotonic()
            try:
                store.get_range("k", 0, 100_000)
                outcome = "ok"
            except Exception as e:
                outcome = type(e).__name__
            elapsed = time.monotonic() - t0
            proxy.clear()
            store.close()
            time.sleep(0.5)          # let a dripping request finish being recorded
            seen = proxy.seen("get")
            print(json.dumps({"case": name, "result": outcome, "attempts": len(seen),
                              "gaps_s": [round(b.t - a.t, 2) for a, b in itertools.pairwise(seen)],
                              "total_s": round(elapsed, 2)}), flush=True)


if __name__ == "__main__":
    main()
