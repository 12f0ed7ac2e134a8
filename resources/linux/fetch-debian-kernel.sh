#!/bin/sh
# Fetch the Debian bookworm cloud kernel and unpack it for Kiln's real-Linux tests.
#
# Usage: fetch-debian-kernel.sh [OUTDIR]     (default: <repo>/resources/out/linux)
# Produces: OUTDIR/vmlinuz     the bzImage from the Debian package
#           OUTDIR/vmlinux     the ELF kernel decompressed out of that bzImage
#           OUTDIR/version     the kernel release string (`uname -r` of the guest)
#           OUTDIR/kernel.info key=value facts (package, compression, PVH note, ...)
# Idempotent: does nothing when the outputs exist and are consistent. Prints one summary line
# to stderr on success. Needs apt (the configured bookworm suites only), dpkg-deb, python3,
# and the decompressor the kernel was built with (lz4 for the bookworm cloud kernel).
set -eu

META=linux-image-cloud-amd64
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUTDIR=${1:-$REPO/resources/out/linux}
TOOL="$HERE/kernel_tool.py"
export DEBIAN_FRONTEND=noninteractive

fail() { echo "fetch-debian-kernel: $*" >&2; exit 1; }
. "$HERE/debfetch.sh"

summary() {
    info="$OUTDIR/kernel.info"
    get() { sed -n "s/^$1=//p" "$info" 2>/dev/null | head -n1; }
    echo "fetch-debian-kernel: $1 $(get package) $(get package_version) -> $OUTDIR:" \
        "version $(cat "$OUTDIR/version"), vmlinuz $(stat -c %s "$OUTDIR/vmlinuz") B," \
        "vmlinux $(stat -c %s "$OUTDIR/vmlinux") B, compression $(get compression)," \
        "PT_LOAD@0x1000000 $(get pt_load_16m), PVH note $(get pvh_note) $(get pvh_entry)" >&2
}

if [ -f "$OUTDIR/kernel.info" ] && python3 "$TOOL" check "$OUTDIR" 2>/dev/null; then
    summary "up to date:"
    exit 0
fi

command -v python3 >/dev/null || fail "python3 is required"
command -v dpkg-deb >/dev/null || fail "dpkg-deb is required"

ensure_candidate "$META"

# The metapackage depends on exactly one versioned image package, e.g. linux-image-6.1.0-48-cloud-amd64.
pkg=$(apt-cache depends "$META" | sed -n 's/^ *Depends: *\(linux-image-[^ ]*\).*/\1/p' | head -n1)
[ -n "$pkg" ] || fail "cannot find the image package $META depends on"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM
fetch_deb "$pkg" "$tmp"

set -- "$tmp"/root/boot/vmlinuz-*
[ $# -eq 1 ] && [ -f "$1" ] || fail "expected exactly one /boot/vmlinuz-* in $pkg"
vmlinuz=$1
version=$(python3 "$TOOL" bzinfo "$vmlinuz" | sed -n 's/^version=//p')
[ "$version" = "${vmlinuz##*/vmlinuz-}" ] \
    || fail "bzImage version '$version' does not match file name ${vmlinuz##*/}"

python3 "$TOOL" extract "$vmlinuz" "$tmp/vmlinux" >"$tmp/info" || fail "vmlinux extraction failed"
python3 "$TOOL" elfinfo "$tmp/vmlinux" >>"$tmp/info" || fail "vmlinux is not a usable ELF"
{
    echo "package=$pkg"
    echo "package_version=$pkgver"
    echo "version=$version"
    cat "$tmp/info"
} >"$tmp/kernel.info"
echo "$version" >"$tmp/version"

# Install: vmlinuz/vmlinux first, then version and kernel.info (which mark the set complete).
mkdir -p "$OUTDIR"
rm -f "$OUTDIR/kernel.info"
for f in vmlinuz vmlinux version kernel.info; do
    src="$tmp/$f"
    [ "$f" = vmlinuz ] && src=$vmlinuz
    cp "$src" "$OUTDIR/.$f.new"
    mv -f "$OUTDIR/.$f.new" "$OUTDIR/$f"
done
summary "fetched"
