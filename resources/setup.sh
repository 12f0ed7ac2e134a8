#!/usr/bin/env bash
# Installs what Kiln's build and tests need on a Debian/Ubuntu host: the C toolchain for
# the test guest, and (unless --no-linux) Debian's cloud kernel and a busybox initramfs.
# Idempotent: installs only what is missing.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need=()
for tool in gcc:gcc ld:binutils python3:python3 make:make ip:iproute2 curl:curl; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
# The Firecracker-client test makes a venv (Debian splits ensurepip into python3-venv).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# Kiln links statically (.cargo/config.toml): it needs glibc's static libraries, which
# gcc only recommends.
[ -f "/usr/lib/$(uname -m)-linux-gnu/libc.a" ] || need+=(libc6-dev)
if ((${#need[@]})); then
    echo "setup: installing ${need[*]} with apt-get" >&2
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

bash "$repo/resources/build-guest.sh" "$repo/resources/out/guest"
if [ "${1:-}" != "--no-linux" ]; then
    bash "$repo/resources/linux/fetch-all.sh"
fi
