//! KVM's dirty log read through [`dirty_bitmaps`], with a guest that writes two pages.

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::Bytes;

use super::*;

/// Real-mode code at 0x1000: `mov byte [0x3000], 0x11; mov byte [0x7000], 0x22;
/// out 0x10, al; hlt`.
const CODE: [u8; 13] = [
    0xc6, 0x06, 0x00, 0x30, 0x11, 0xc6, 0x06, 0x00, 0x70, 0x22, 0xe6, 0x10, 0xf4,
];
const MEM_SIZE: usize = 1 << 20;

fn kvm_or_skip() -> Option<Kvm> {
    match Kvm::new() {
        Ok(k) => Some(k),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: no KVM: {e}"
            );
            eprintln!("skipped: cannot open /dev/kvm: {e}");
            None
        }
    }
}

fn set_pages(bitmaps: &[Vec<u64>]) -> Vec<(usize, u64)> {
    let mut v = Vec::new();
    for (r, b) in bitmaps.iter().enumerate() {
        for (w, &word) in b.iter().enumerate() {
            for bit in 0..64 {
                if word & (1 << bit) != 0 {
                    v.push((r, w as u64 * 64 + bit));
                }
            }
        }
    }
    v
}

/// Runs [`CODE`] in a VM whose one slot logs dirty pages; returns the VM and its memory.
fn run_guest(kvm: &Kvm) -> (VmFd, GuestMemoryMmap) {
    let vm = kvm.create_vm().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&CODE, GuestAddress(0x1000)).unwrap();
    let region = mem.iter().next().unwrap();
    let r = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: region.as_ptr() as u64,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
    };
    // SAFETY: the region is a live mapping owned by `mem`, which the caller keeps for
    // as long as the VM fd.
    unsafe { vm.set_user_memory_region(r) }.unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    match vcpu.run().unwrap() {
        VcpuExit::IoOut(0x10, _) => {}
        other => panic!("unexpected exit {other:?}"),
    }
    (vm, mem)
}

#[test]
fn dirty_log_names_the_pages_the_guest_wrote() {
    let Some(kvm) = kvm_or_skip() else { return };
    let (vm, mem) = run_guest(&kvm);
    assert_eq!(page_byte(&mem, 0x3000), 0x11);
    let bitmaps = dirty_bitmaps(&vm, &mem).unwrap();
    assert_eq!(bitmaps.len(), 1);
    assert_eq!(bitmaps[0].len(), MEM_SIZE / PAGE_SIZE / 64);
    assert_eq!(set_pages(&bitmaps), vec![(0, 3), (0, 7)]);
    // Reading the log cleared it.
    assert!(set_pages(&dirty_bitmaps(&vm, &mem).unwrap()).is_empty());
}

#[test]
fn dirty_log_of_a_slot_without_tracking_says_so() {
    let Some(kvm) = kvm_or_skip() else { return };
    let vm = kvm.create_vm().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let region = mem.iter().next().unwrap();
    let r = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: region.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping owned by `mem`, which outlives `vm`.
    unsafe { vm.set_user_memory_region(r) }.unwrap();
    let e = dirty_bitmaps(&vm, &mem).unwrap_err();
    assert!(e.to_string().contains("track_dirty_pages"), "{e}");
}

fn page_byte(mem: &GuestMemoryMmap, gpa: u64) -> u8 {
    mem.read_obj(GuestAddress(gpa)).unwrap()
}
