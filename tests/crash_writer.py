"""Writes files on a cachefs mount until it dies, printing what fsync acknowledged.

usage: crash_writer.py DIR SEED — writes DIR/f<i> (deterministic bytes from SEED), fsyncs after each
chunk, and prints "synced NAME LENGTH" only once fsync returned. Exits when the mount goes away.
"""
import os
import random
import sys

directory, seed = sys.argv[1], sys.argv[2]
rng = random.Random(seed)
i = 0
try:
    while True:
        name = f"f{i}"
        total = rng.choice([3000, 200_000, 2 << 20, 7 << 20])       # small files and multipart ones
        data = random.Random(f"{seed}/{name}").randbytes(total)
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        off = 0
        while off < total:
            n = os.write(fd, data[off:off + rng.choice([4096, 65536, 1 << 20])])
            off += n
            if rng.random() < 0.5 or off == total:
                os.fsync(fd)
                print(f"synced {name} {off}", flush=True)
        os.close(fd)
        i += 1
except OSError as e:
    print(f"stopped {e.errno}", flush=True)
