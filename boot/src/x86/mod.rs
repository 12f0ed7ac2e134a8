//! x86-64 vCPU boot state: GDT, identity page tables, registers, CPUID, MSRs, LAPIC, FPU.
//! Only `kvm-bindings` types are used; nothing here touches `/dev/kvm`.

pub mod cpuid;
pub mod fpu;
pub mod gdt;
pub mod lapic;
pub mod msr;
pub mod paging;
pub mod regs;
