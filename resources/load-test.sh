#!/bin/sh
# Load test: N minimal guests (default 40), one test guest doing virtio-blk I/O per 7 of
# them and, as root, 4 doing virtio-net I/O through TAPs, all at once. Checks that every
# VM succeeds and that nothing leaks: no kiln process left, no extra fd in the test
# process, no TAP left, no temp file left. It runs tests/load.rs (also part of
# `cargo test`), with N minimal guests.
#
# Usage: resources/load-test.sh [N]
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
N=${1:-40}
case "$N" in
'' | *[!0-9]*)
    echo "load-test.sh: N must be a whole number of VMs, e.g. load-test.sh 40 (got '$N')" >&2
    exit 2
    ;;
esac
cd "$REPO"
KILN_LOAD_VMS=$N exec cargo test -p kiln --test load -- --nocapture
