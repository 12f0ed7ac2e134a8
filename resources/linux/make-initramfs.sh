#!/bin/sh
# Build the test initramfs for Kiln's real-Linux tests.
#
# Usage: make-initramfs.sh [OUTDIR]     (default: <repo>/resources/out/linux)
# Produces: OUTDIR/initramfs.cpio.gz  gzip'd newc cpio holding Debian's static busybox,
#           applet symlinks, /dev/console, and /init (= init.sh beside this script), which prints
#           "KILN-LINUX init reached" and "KILN-LINUX uname <release>", then `reboot -f`.
# Idempotent: does nothing when the archive exists, is complete and carries the current init.sh.
# Prints one summary line to stderr on success. Needs apt (busybox-static is only downloaded,
# not installed), dpkg-deb and python3.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUTDIR=${1:-$REPO/resources/out/linux}
TOOL="$HERE/mkinitramfs.py"
INIT="$HERE/init.sh"
OUT="$OUTDIR/initramfs.cpio.gz"
PKG=busybox-static
export DEBIAN_FRONTEND=noninteractive

fail() { echo "make-initramfs: $*" >&2; exit 1; }
. "$HERE/debfetch.sh"

if [ -f "$OUT" ] && n=$(python3 "$TOOL" check "$OUT" "$INIT" 2>/dev/null); then
    echo "make-initramfs: up to date: $OUT ($(stat -c %s "$OUT") B, ${n#entries=} entries)" >&2
    exit 0
fi

command -v python3 >/dev/null || fail "python3 is required"
command -v dpkg-deb >/dev/null || fail "dpkg-deb is required"

ensure_candidate "$PKG"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM
fetch_deb "$PKG" "$tmp"
[ -f "$tmp/root/bin/busybox" ] || fail "$PKG has no /bin/busybox"

python3 "$TOOL" build "$tmp/root/bin/busybox" "$INIT" "$tmp/initramfs.cpio.gz" \
    || fail "building the archive failed"
n=$(python3 "$TOOL" check "$tmp/initramfs.cpio.gz" "$INIT") || fail "built archive fails its check"

mkdir -p "$OUTDIR"
cp "$tmp/initramfs.cpio.gz" "$OUTDIR/.initramfs.cpio.gz.new"
mv -f "$OUTDIR/.initramfs.cpio.gz.new" "$OUT"
echo "make-initramfs: built $OUT ($(stat -c %s "$OUT") B, ${n#entries=} entries," \
    "$PKG $pkgver)" >&2
