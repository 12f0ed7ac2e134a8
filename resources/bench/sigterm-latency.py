#!/usr/bin/env python3
"""How fast Kiln answers SIGTERM while its guest keeps the disk busy.

Boots the test guest in kiln.hostile=busy mode (1 MiB virtio-blk reads, re-posted as
they complete, forever) with a scratch disk, waits for the guest's
"KILN-GUEST hostile busy" line plus a settle time, sends SIGTERM and measures the time
until the kiln process has exited (CLOCK_MONOTONIC, parent side). Prints one line per
run and the median and max; exits 1 if any run did not exit with 128+15.

usage: sigterm-latency.py KILN_BINARY [--runs N] [--settle SECONDS] [--kernel ELF]
"""
import argparse
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READY = b"KILN-GUEST hostile busy"


def one_run(kiln, kernel, disk, settle, timeout=120.0):
    cmd = [kiln, "run", "--kernel", kernel, "--memory", "128M", "--serial", "stdio",
           "--cmdline", "console=ttyS0 kiln.mode=hostile kiln.hostile=busy",
           "--disk", f"path={disk}"]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    buf, deadline = b"", time.monotonic() + timeout
    try:
        while READY not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or p.poll() is not None:
                raise RuntimeError(f"guest never got busy (exit {p.poll()}): {buf[-400:]!r}")
            r, _, _ = select.select([p.stdout], [], [], min(left, 1.0))
            if r:
                buf += os.read(p.stdout.fileno(), 65536)
        end = time.monotonic() + settle
        while time.monotonic() < end:  # keep draining the console meanwhile
            r, _, _ = select.select([p.stdout], [], [], max(0.0, end - time.monotonic()))
            if r:
                os.read(p.stdout.fileno(), 65536)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.stdout.close()
        err = p.stderr.read()
        code = p.wait(timeout=60)
        ms = (time.monotonic() - t0) * 1000
        return ms, code, len(err)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kiln")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--kernel", default=os.path.join(REPO, "resources/out/guest/kiln-test-guest.elf"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-sigterm-") as d:
        disk = os.path.join(d, "disk.img")
        with open(disk, "wb") as f:
            f.write(os.urandom(64 << 20))
        times, bad = [], 0
        for i in range(a.runs):
            ms, code, errlen = one_run(a.kiln, a.kernel, disk, a.settle)
            times.append(ms)
            bad += code != 128 + 15
            print(f"run {i + 1}: SIGTERM -> exit {ms:.1f} ms, status {code}, stderr {errlen} bytes")
    print(f"median {statistics.median(times):.1f} ms, max {max(times):.1f} ms over {a.runs} runs")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
