#!/usr/bin/env bash
# Kiln's whole test suite: set-up (packages, test guest, Debian kernel), then every
# unit and integration test in the workspace. Needs /dev/kvm (read/write) for the
# integration tests; run as root or as a member of the kvm group. The TAP tests need
# root (CAP_NET_ADMIN) and skip with a message otherwise (outside CI).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash resources/setup.sh
cargo build --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace -- --test-threads=2 --show-output 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one summary per binary). A test
# that returns early because its environment is missing prints "skipped: <why>" (shown
# by --show-output): it counts as skipped, not passed.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
     /^skipped: / { k++; print "skipped test: " substr($0, 10) }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p - k, f, s + k }' "$log"
exit "$status"
