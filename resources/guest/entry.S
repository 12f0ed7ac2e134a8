/*
 * Entry points of the Kiln test guest (linked at 0x100000, see guest.ld).
 *
 *   0x100000  pvh_start32: PVH entry (Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY). 32-bit protected
 *             mode, paging off, EBX = hvm_start_info. Builds identity page tables for
 *             0..4 GiB (2 MiB pages), enters long mode and calls kiln_main(info, 1).
 *   0x1001c0  kernel_info ("LToP", boot protocol 2.15).
 *   0x100200  _start64: Linux 64-bit boot protocol entry (also the ELF e_entry and the
 *             bzImage 64-bit entry at payload offset 0x200). Long mode, identity paging set
 *             up by the VMM, RSI = boot_params. Calls kiln_main(boot_params, 0).
 *
 * Both paths zero .bss and switch to the guest's own stack. Interrupts stay off.
 */

#define PVH_ELFNOTE_TYPE 18 /* XEN_ELFNOTE_PHYS32_ENTRY */
#define CR0_PE 0x00000001
#define CR0_PG 0x80000000
#define CR4_PAE 0x00000020
#define MSR_EFER 0xc0000080
#define EFER_LME 0x00000100
#define PTE_P_RW 0x003
#define PDE_2M 0x083 /* present, writable, page size */
#define SEL_CODE64 0x08
#define SEL_DATA 0x10

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 4                 /* descsz */
    .long PVH_ELFNOTE_TYPE
    .asciz "Xen"
    .balign 4
    .long pvh_start32       /* 32-bit physical entry */
    .balign 4

    .section .head.text, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    /* EBX (start info) is preserved by everything below. */
    lgdt gdt_desc
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs

    /* Zero .bss (which holds the page tables and the stack). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT; PDPT[0..3] -> PD0..PD3; PDn[i] -> 2 MiB pages identity. */
    movl $(pvh_pdpt + PTE_P_RW), pvh_pml4
    movl $pvh_pdpt, %edi
    movl $(pvh_pd + PTE_P_RW), %eax
    movl $4, %ecx
1:  movl %eax, (%edi)
    addl $0x1000, %eax
    addl $8, %edi
    decl %ecx
    jnz 1b
    movl $pvh_pd, %edi
    movl $PDE_2M, %eax
    movl $2048, %ecx
2:  movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    decl %ecx
    jnz 2b

    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $pvh_pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $(CR0_PG | CR0_PE), %eax
    movl %eax, %cr0
    ljmp $SEL_CODE64, $pvh_start64

    .code64
pvh_start64:
    movl $boot_stack_top, %esp
    movl %ebx, %edi         /* hvm_start_info (zero-extended) */
    movl $1, %esi           /* came through PVH */
    call kiln_main
3:  pause
    jmp 3b

    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff /* 0x10: flat data */
gdt_end:
    .balign 4
    .word 0
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    /* kernel_info (Documentation/arch/x86/boot.rst), referenced by kernel_info_offset. */
    .org 0x1c0
    .globl kernel_info
kernel_info:
    .ascii "LToP"
    .long 16                /* size */
    .long 16                /* size_total */
    .long 0                 /* setup_type_max */

    /* Linux 64-bit boot protocol entry: must be at payload offset 0x200. */
    .org 0x200
    .globl _start64
_start64:
    cli
    cld
    movq %rsi, %rbx         /* boot_params */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $3, %ecx
    xorl %eax, %eax
    rep stosq
    movl $boot_stack_top, %esp
    movq %rbx, %rdi
    xorl %esi, %esi         /* Linux 64-bit entry */
    call kiln_main
4:  pause
    jmp 4b

    .section .bss.pagetables, "aw", @nobits
    .balign 4096
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
pvh_pd:
    .skip 4 * 4096

    .section .bss.stack, "aw", @nobits
    .balign 16
boot_stack:
    .skip 16384
boot_stack_top:

    .section .note.GNU-stack, "", @progbits
