#!/usr/bin/env python3
"""What a fork-based snapshot (as Redis takes them) would cost on this machine: how long
`fork()` takes for a process with 100 MiB, 500 MiB and 1 GiB of private memory written
(traffic would have to stop for that long, to fork a consistent state), and what a page
written for the first time after the fork costs (copy-on-write) against a page written again.
Allocates the memory in this process only; three forks per size.

    python3 loadtest/fork-probe.py
"""
import mmap
import os
import time

PAGE = 4096


def touch(memory, size, value):
    started = time.perf_counter()
    for at in range(0, size, PAGE):
        memory[at] = value
    return (time.perf_counter() - started) / (size // PAGE) * 1e6


def main():
    for mib in (100, 500, 1024):
        size = mib << 20
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        touch(memory, size, 1)
        forks = []
        for _ in range(3):
            started = time.perf_counter()
            child = os.fork()
            if child == 0:
                os._exit(0)
            forks.append((time.perf_counter() - started) * 1e3)
            os.waitpid(child, 0)
        # A child that keeps the pages shared while the parent writes every one of them.
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(write_end)
            os.read(read_end, 1)
            os._exit(0)
        cow = touch(memory, size, 2)
        os.close(write_end)
        os.waitpid(child, 0)
        again = touch(memory, size, 3)
        print(f"{mib:5} MiB: fork {' / '.join(f'{ms:.1f}' for ms in forks)} ms; first write "
              f"to a page after it {cow:.2f} us, a later write {again:.2f} us")
        memory.close()


if __name__ == "__main__":
    main()
