#!/bin/sh
# Prepare every guest artifact of Kiln's real-Linux tests (non-interactive; run as root in CI).
#
# Usage: fetch-all.sh [OUTDIR]     (default: <repo>/resources/out/linux)
# Installs the missing tools (python3, lz4 and zstd for the kernel payload) with apt, running
# `apt-get update` at most once and only when needed, then runs fetch-debian-kernel.sh and
# make-initramfs.sh. Both are idempotent, so re-running this is cheap.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive

fail() { echo "fetch-all: $*" >&2; exit 1; }

command -v apt-get >/dev/null || fail "apt-get is required (Debian bookworm host)"
command -v dpkg-deb >/dev/null || fail "dpkg-deb is required"

# command -> Debian package providing it
missing=""
for pair in python3:python3 lz4:lz4 zstd:zstd; do
    command -v "${pair%%:*}" >/dev/null || missing="$missing ${pair#*:}"
done

updated=no
has_candidates() {
    for p in "$@"; do
        c=$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
        [ -n "$c" ] && [ "$c" != "(none)" ] || return 1
    done
}
if [ -n "$missing" ]; then
    [ "$(id -u)" -eq 0 ] || fail "missing packages:$missing (run as root to install them)"
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    if ! has_candidates $missing linux-image-cloud-amd64 busybox-static; then
        apt-get update -qq >/dev/null || fail "apt-get update failed"
        updated=yes
    fi
    # shellcheck disable=SC2086
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends $missing >/dev/null \
        || fail "apt-get install$missing failed"
    echo "fetch-all: installed$missing" >&2
fi
if [ "$updated" = no ] && ! has_candidates linux-image-cloud-amd64 busybox-static; then
    apt-get update -qq >/dev/null || fail "apt-get update failed"
fi

"$HERE/fetch-debian-kernel.sh" "$@"
"$HERE/make-initramfs.sh" "$@"
