#!/usr/bin/env python3
"""How many `pwrite` + `fdatasync` rounds a second this disk completes, with 1-3 threads
syncing one file (as a log would) and with 2-3 threads each on its own file. Each thread
appends 1 400 bytes (about one group commit of 14 reserves) and syncs, for 2 s per case.
Then one thread appending the same way through `O_DIRECT` (rewriting the 4 KiB block the log
ends in, as a direct-I/O log must), with and without the `fdatasync` (which then only flushes
the disk's cache). Writes 64 MiB files under target/fsync-probe and removes them.

    python3 loadtest/fsync-probe.py
"""
import mmap
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


def run_direct(sync, seconds=2.0):
    fd = os.open(prepare("direct"), os.O_RDWR | os.O_DIRECT)
    block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    block.write(b"x" * 4096)
    count, stop = 0, time.time() + seconds
    while time.time() < stop:
        at = count * len(RECORD) % (SIZE - 4096)
        os.pwritev(fd, [block], at - at % 4096)
        if sync:
            os.fdatasync(fd)
        count += 1
    os.close(fd)
    how = "O_DIRECT write + fdatasync" if sync else "O_DIRECT write alone"
    print(f"1 thread, {how}: {count / seconds:.0f} rounds/s")


def main():
    os.makedirs(DIR, exist_ok=True)
    try:
        for threads in (1, 2, 3):
            run(threads, True)
        for threads in (2, 3):
            run(threads, False)
        run_direct(True)
        run_direct(False)
    finally:
        shutil.rmtree(DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
