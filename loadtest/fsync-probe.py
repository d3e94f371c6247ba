#!/usr/bin/env python3
"""How many `pwrite` + `fdatasync` rounds a second this disk completes, with 1-3 threads
syncing one file (as a log would) and with 2-3 threads each on its own file. Each thread
appends 1 400 bytes (about one group commit of 14 reserves) and syncs, for 2 s per case.
Writes 64 MiB files under target/fsync-probe and removes them.

    python3 loadtest/fsync-probe.py
"""
import os
import shutil
import threading
import time

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "fsync-probe")
SIZE = 64 << 20
RECORD = b"x" * 1400


def prepare(name):
    path = os.path.join(DIR, name)
    with open(path, "wb") as f:
        f.write(b"\0" * SIZE)
        f.flush()
        os.fsync(f.fileno())
    return path


def run(threads, same_file, seconds=2.0):
    paths = [prepare("f0")] * threads if same_file else [prepare(f"f{i}") for i in range(threads)]
    counts = [0] * threads
    lock = threading.Lock()
    offset = [0]
    stop = time.time() + seconds

    def worker(i):
        fd = os.open(paths[i], os.O_RDWR)
        while time.time() < stop:
            if same_file:
                with lock:
                    at = offset[0]
                    offset[0] += len(RECORD)
            else:
                at = counts[i] * len(RECORD)
            os.pwrite(fd, RECORD, at % (SIZE - len(RECORD)))
            os.fdatasync(fd)
            counts[i] += 1
        os.close(fd)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    where = "one file" if same_file else "one file each"
    print(f"{threads} thread(s), {where}: {sum(counts) / seconds:.0f} syncs/s")


def main():
    os.makedirs(DIR, exist_ok=True)
    try:
        for threads in (1, 2, 3):
            run(threads, True)
        for threads in (2, 3):
            run(threads, False)
    finally:
        shutil.rmtree(DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
