/*
 * Minimal PVH guest for start-up benchmarks: the workload Kiln's start-up targets and
 * the anchors (Firecracker, Cloud Hypervisor, QEMU microvm) are measured with. It writes
 * one serial byte, the boot-timer byte (123 to MMIO 0xc0000000) and resets through the
 * i8042 (0xfe to port 0x64). PVH entry: 32-bit protected mode, paging off.
 */
    .text
    .code32
    .globl min_start
min_start:
    mov     $0x3f8, %dx
    mov     $'K', %al
    out     %al, %dx
    movb    $123, 0xc0000000
    mov     $0xfe, %al
    out     %al, $0x64
1:  pause
    jmp     1b

/* XEN_ELFNOTE_PHYS32_ENTRY (type 18): the 32-bit PVH entry point. */
    .section .note.Xen, "a", @note
    .balign 4
    .long   4, 4, 18
    .asciz  "Xen"
    .balign 4
    .long   min_start
