/*
 * kiln.hostile=smp: start-up code for the second vCPU. hostile_smp.c copies the bytes
 * between hostile_tramp_start and hostile_tramp_end to TRAMP (below 1 MiB, 4 KiB aligned),
 * fills the three slots and sends INIT + SIPI (vector TRAMP >> 12). The AP starts in real
 * mode at TRAMP:0, switches to protected mode with the GDT below, enables PAE, loads the
 * BSP's CR3, sets EFER.LME, turns paging on, enters 64-bit mode and calls the entry slot on
 * the stack slot. Every address is absolute (TRAMP + offset): the code is not relocatable.
 */
#define TRAMP 0x10000
#define REL(x) (TRAMP + ((x) - hostile_tramp_start))
#define CR0_PE 0x00000001
#define CR0_PG 0x80000000
#define CR4_PAE 0x00000020
#define MSR_EFER 0xc0000080
#define EFER_LME 0x00000100

    .section .rodata.tramp, "a"
    .globl hostile_tramp_start, hostile_tramp_end
    .globl hostile_tramp_cr3, hostile_tramp_stack, hostile_tramp_entry
    .balign 16
hostile_tramp_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (tramp_gdt_desc - hostile_tramp_start)
    movl %cr0, %eax
    orl $CR0_PE, %eax
    movl %eax, %cr0
    ljmpl $0x08, $REL(tramp_pm32)

    .code32
tramp_pm32:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    movl REL(hostile_tramp_cr3), %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $CR0_PG, %eax
    movl %eax, %cr0
    ljmpl $0x18, $REL(tramp_lm64)

    .code64
tramp_lm64:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movq REL(hostile_tramp_stack), %rsp
    movq REL(hostile_tramp_entry), %rax
    callq *%rax
1:  pause
    jmp 1b

    .balign 8
tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff /* 0x10: data */
    .quad 0x00af9a000000ffff /* 0x18: 64-bit code */
tramp_gdt_desc:
    .word tramp_gdt_desc - tramp_gdt - 1
    .long REL(tramp_gdt)
    .balign 8
hostile_tramp_cr3:
    .quad 0
hostile_tramp_stack:
    .quad 0
hostile_tramp_entry:
    .quad 0
hostile_tramp_end:

    .section .note.GNU-stack, "", @progbits
