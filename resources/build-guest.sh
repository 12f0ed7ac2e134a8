#!/bin/sh
# Build the Kiln test guest (resources/guest/) with the system gcc.
#
# Usage: build-guest.sh [--print] [OUTDIR]      (default OUTDIR: <repo>/resources/out/guest)
# Produces OUTDIR/kiln-test-guest.elf     ELF64, PT_LOAD at 0x100000, e_entry = 64-bit entry,
#                                         Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY)
#          OUTDIR/kiln-test-guest.bzImage the same program as a bzImage (64-bit entry at +0x200)
#          OUTDIR/kiln-min.elf            the minimal PVH guest of the start-up benchmarks
#                                         (guest/minimal/: serial byte, boot timer, reset)
# Rebuilds only when a source (or this script) is newer than the outputs. Prints nothing but
# errors; with --print, prints the absolute ELF path on stdout. Safe to run concurrently.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SRC="$HERE/guest"
PRINT=0
OUTDIR=
for arg in "$@"; do
    case "$arg" in
    --print) PRINT=1 ;;
    -*) echo "build-guest.sh: unknown option $arg" >&2; exit 2 ;;
    *) OUTDIR=$arg ;;
    esac
done
OUTDIR=${OUTDIR:-$REPO/resources/out/guest}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
ELF="$OUTDIR/kiln-test-guest.elf"
BZ="$OUTDIR/kiln-test-guest.bzImage"
MIN="$OUTDIR/kiln-min.elf"

CC=${CC:-gcc}
CFLAGS="-ffreestanding -nostdlib -mno-sse -mno-mmx -mno-popcnt -mno-red-zone -mno-sse2 \
 -fno-pic -fno-pie -fno-stack-protector -mgeneral-regs-only -O2 -m64 -march=x86-64 \
 -fcf-protection=none -fno-asynchronous-unwind-tables -fno-unwind-tables \
 -fno-tree-loop-distribute-patterns -fno-jump-tables -fno-builtin -std=gnu11 -Wall -Wextra -Werror"

up_to_date() {
    for out in "$ELF" "$BZ" "$MIN"; do
        [ -f "$out" ] || return 1
        # Any source or this script newer than an output means rebuild.
        [ -z "$(find "$SRC" "$HERE/build-guest.sh" -newer "$out" -type f 2>/dev/null | head -n1)" ] ||
            return 1
    done
}

build() {
    tmp=$(mktemp -d "$OUTDIR/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    objs=""
    for s in "$SRC"/*.c "$SRC"/*.S; do
        o="$tmp/$(basename "$s").o"
        $CC $CFLAGS -I"$SRC" -c "$s" -o "$o"
        objs="$objs $o"
    done
    # shellcheck disable=SC2086
    ld -nostdlib -static -no-pie --build-id=none -z max-page-size=0x1000 -z noexecstack \
        --no-warn-rwx-segments -T "$SRC/guest.ld" -o "$tmp/guest.elf" $objs
    python3 "$SRC/mkbzimage.py" "$tmp/guest.elf" "$tmp/guest.bzImage"
    $CC -m64 -c "$SRC/minimal/min.S" -o "$tmp/min.o"
    ld -nostdlib -static -no-pie --build-id=none -z max-page-size=0x1000 -z noexecstack \
        -T "$SRC/minimal/min.ld" -o "$tmp/min.elf" "$tmp/min.o"
    mv -f "$tmp/min.elf" "$MIN"
    mv -f "$tmp/guest.elf" "$ELF"
    mv -f "$tmp/guest.bzImage" "$BZ"
    rm -rf "$tmp"
    trap - EXIT
}

if ! up_to_date; then
    # Serialize concurrent builds (e.g. parallel cargo tests); re-check under the lock.
    exec 9>"$OUTDIR/.lock"
    flock 9
    up_to_date || build
    exec 9>&-
fi
[ "$PRINT" = 1 ] && echo "$ELF"
exit 0
