#!/usr/bin/env python3
"""What Kiln's confinement costs at start-up: exec -> first KVM_RUN and exec -> exit of
the minimal guest with --seccomp off, --seccomp on (the default) and --jail (seccomp on,
new namespaces, pivot_root, uid/gid drop). Variants run interleaved, one VM at a time;
prints medians and the differences to --seccomp off. Needs root for --jail.

usage: confine-cost.py KILN_BINARY [--runs N] [--kernel ELF]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(kiln, kernel, extra, tmp):
    timings = os.path.join(tmp, "t.json")
    start = time.monotonic_ns()
    env = dict(os.environ, KILN_START_NS=str(start))
    p = subprocess.run([kiln, "run", "--kernel", kernel, "--serial", "none", "--timings", timings] + extra,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall_us = (time.monotonic_ns() - start) / 1000
    if p.returncode != 0:
        raise RuntimeError(f"{extra}: exit {p.returncode}: {p.stderr.decode()[-300:]}")
    with open(timings) as f:
        t = json.load(f)
    os.unlink(timings)
    return t["first_kvm_run_us"], wall_us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kiln")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--kernel", default=os.path.join(REPO, "resources/out/guest/kiln-min.elf"))
    a = ap.parse_args()
    variants = {"seccomp off": ["--seccomp", "off"], "seccomp on": ["--seccomp", "on"]}
    if os.geteuid() == 0:
        variants["jail + seccomp"] = None
    res = {k: ([], []) for k in variants}
    with tempfile.TemporaryDirectory(prefix="kiln-confine-") as tmp:
        os.chmod(tmp, 0o755)
        kernel = os.path.join(tmp, "guest.elf")
        with open(a.kernel, "rb") as src, open(kernel, "wb") as dst:
            dst.write(src.read())
        os.chmod(kernel, 0o644)
        for i in range(a.runs + 1):  # the first round warms caches and is dropped
            for name, extra in variants.items():
                if extra is None:
                    jail = os.path.join(tmp, "jail")
                    os.mkdir(jail)
                    extra = ["--jail", jail, "--uid", "65534", "--gid", "65534"]
                first, wall = run(a.kiln, kernel, extra, tmp)
                if name.startswith("jail"):
                    os.rmdir(jail)
                if i:
                    res[name][0].append(first)
                    res[name][1].append(wall)
    base_first = statistics.median(res["seccomp off"][0])
    base_wall = statistics.median(res["seccomp off"][1])
    print(f"{'variant':<16} {'exec->1st KVM_RUN':>18} {'delta':>8} {'exec->exit':>11} {'delta':>8}   ({a.runs} runs, medians, ms)")
    for name, (first, wall) in res.items():
        f, w = statistics.median(first) / 1000, statistics.median(wall) / 1000
        print(f"{name:<16} {f:>18.3f} {f - base_first / 1000:>+8.3f} {w:>11.2f} {w - base_wall / 1000:>+8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
