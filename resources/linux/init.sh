#!/bin/sh
# /init of Kiln's real-Linux test initramfs (PID 1). Prints two marker lines, then resets the
# machine: `reboot -f` with `reboot=k` on the kernel command line resets through the i8042,
# which the VMM (and QEMU with -no-reboot) treats as guest exit.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() {
    echo "$1" >/dev/console
    # Also write to the first UART unless it already is the console (avoids doubled lines).
    if [ -c /dev/ttyS0 ] && ! grep -qw ttyS0 /sys/class/tty/console/active 2>/dev/null; then
        echo "$1" 2>/dev/null >/dev/ttyS0
    fi
}

say "KILN-LINUX init reached"
say "KILN-LINUX uname $(uname -r)"
sync
reboot -f
poweroff -f
# Both failed: PID 1 exiting panics the kernel, which reboots after `panic=N` seconds.
exit 1
