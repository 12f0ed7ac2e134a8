#!/usr/bin/env bash
# Kiln's whole test suite: set-up (packages, test guest, Debian kernel), then every
# unit and integration test in the workspace. Needs /dev/kvm (read/write) for the
# integration tests; run as root or as a member of the kvm group.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash resources/setup.sh
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
