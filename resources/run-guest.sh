#!/usr/bin/env bash
# Boots Kiln's test guest: builds Kiln (release) and the guest on demand, then runs
#   kiln run --kernel resources/out/guest/kiln-test-guest.elf
# Extra arguments are passed to `kiln run` (e.g. --cpus 2 --cmdline "...").
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { echo "run-guest: $*" >&2; }
say "checking packages (gcc, binutils, make, ...) and building the test guest"
bash resources/setup.sh --no-linux >/dev/null
say "building kiln (cargo build --release; about a minute the first time)"
cargo build --release --quiet
say "booting resources/out/guest/kiln-test-guest.elf (Ctrl-A x quits)"
exec target/x86_64-unknown-linux-gnu/release/kiln run --kernel resources/out/guest/kiln-test-guest.elf --boot-timer \
    --cmdline "console=ttyS0 reboot=k panic=1 kiln.ram=$((128*1024*1024 - 0x60400)) kiln.cpus=1" "$@"
