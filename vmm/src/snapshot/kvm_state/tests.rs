//! Save/restore tests on the host's KVM: each builds small VMs like [`crate::vm`] does
//! (1 MiB of memory, TSS and identity map, irqchip, PIT), some running a few real-mode
//! instructions. They print `skipped:` without a KVM device (and fail under CI=true).

use boot::GuestMemoryMmap;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_mp_state, kvm_pit_config, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_MP_STATE_HALTED, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::*;

const MEM_SIZE: usize = 0x10_0000;
const CODE: u64 = 0x1000;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_MTRR_PHYS_BASE0: u32 = 0x200;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// Real mode: `inc ax; out 0x10, al; jmp short back to the inc`.
const COUNTER_LOOP: [u8; 5] = [0x40, 0xe6, 0x10, 0xeb, 0xfb];
/// Real mode: `in al, 0x11; out 0x10, al; jmp short back to the in`.
const ECHO_LOOP: [u8; 6] = [0xe4, 0x11, 0xe6, 0x10, 0xeb, 0xfa];

fn kvm() -> Option<Kvm> {
    let path = crate::host::kvm_device_path();
    if !path.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: no KVM device at {}",
            path.display()
        );
        eprintln!("skipped: no KVM device at {}", path.display());
        return None;
    }
    Some(crate::host::open_kvm().expect("opening the KVM device"))
}

/// A VM built like Kiln's, with one vCPU (configured like Kiln's when `configure`).
struct TestVm {
    vm: VmFd,
    vcpu: VcpuFd,
    mem: GuestMemoryMmap,
}

impl TestVm {
    fn new(kvm: &Kvm, configure: bool) -> Self {
        let vm = kvm.create_vm().unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let region = mem.iter().next().unwrap();
        let r = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the TestVm keeps
        // alive as long as the VM fd (fields drop in order: vm, vcpu, then mem).
        unsafe { vm.set_user_memory_region(r) }.unwrap();
        vm.set_tss_address(boot::layout::KVM_TSS_ADDRESS as usize)
            .unwrap();
        vm.set_identity_map_address(boot::layout::KVM_IDENTITY_MAP_ADDRESS)
            .unwrap();
        vm.create_irq_chip().unwrap();
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        if configure {
            let cpuid = crate::vcpu::supported_cpuid(kvm).unwrap();
            crate::vcpu::configure(&cpuid, &vcpu, 0, 1, None).unwrap();
        }
        Self { vm, vcpu, mem }
    }

    /// A configured VM about to run `code` in real mode at [`CODE`].
    fn real_mode(kvm: &Kvm, code: &[u8]) -> Self {
        let t = Self::new(kvm, true);
        t.mem.write_slice(code, GuestAddress(CODE)).unwrap();
        let mut sregs = t.vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        t.vcpu.set_sregs(&sregs).unwrap();
        let mut regs = t.vcpu.get_regs().unwrap();
        regs.rip = CODE;
        regs.rflags = 2;
        regs.rax = 0;
        t.vcpu.set_regs(&regs).unwrap();
        t
    }

    /// A fresh VM holding a copy of this one's memory, with `vcpu` and `vm` restored.
    fn restored_copy(&self, kvm: &Kvm, vcpu: &VcpuState, vm: &VmState) -> Self {
        let t = Self::new(kvm, false);
        let mut bytes = vec![0u8; MEM_SIZE];
        self.mem.read_slice(&mut bytes, GuestAddress(0)).unwrap();
        t.mem.write_slice(&bytes, GuestAddress(0)).unwrap();
        restore_vm(&t.vm, vm).unwrap();
        restore_vcpu(&t.vcpu, vcpu).unwrap();
        t
    }

    fn save(&self, kvm: &Kvm) -> (VcpuState, VmState) {
        let msrs = msr_indices_to_save(kvm).unwrap();
        (
            save_vcpu(&self.vcpu, &msrs).unwrap(),
            save_vm(&self.vm).unwrap(),
        )
    }

    /// Runs to the next port exit: `(port, is_out, first data byte)`.
    fn next_io(&mut self) -> (u16, bool, u8) {
        match self.vcpu.run().unwrap() {
            VcpuExit::IoOut(port, data) => (port, true, data[0]),
            VcpuExit::IoIn(port, data) => {
                data[0] = 0x42;
                (port, false, 0x42)
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn msr(state: &VcpuState, index: u32) -> u64 {
    state.msrs.iter().find(|m| m.index == index).unwrap().data
}

/// `state` with the values that legitimately move between two saves set to 0: the TSC
/// (it counts on) and the PIT's count load times (host time of the last reload).
fn without_moving_parts(mut vcpu: VcpuState, mut vm: VmState) -> (VcpuState, VmState) {
    for m in vcpu.msrs.iter_mut().filter(|m| m.index == MSR_IA32_TSC) {
        m.data = 0;
    }
    for c in vm.pit.channels.iter_mut() {
        c.count_load_time = 0;
    }
    vm.clock = kvm_clock_data::default();
    (vcpu, vm)
}

/// Gives the VM and vCPU state that differs from a fresh one's in every block saved.
fn make_distinctive(t: &TestVm) {
    let mut regs = t.vcpu.get_regs().unwrap();
    regs.rbx = 0x1234_5678_9abc_def0;
    regs.r15 = 0xfeed;
    t.vcpu.set_regs(&regs).unwrap();
    let mut sregs = t.vcpu.get_sregs().unwrap();
    sregs.gdt.base = 0x5000;
    sregs.gdt.limit = 0x27;
    t.vcpu.set_sregs(&sregs).unwrap();
    let mut dr = t.vcpu.get_debug_regs().unwrap();
    dr.db[1] = 0x7000;
    t.vcpu.set_debug_regs(&dr).unwrap();
    let mut lapic = t.vcpu.get_lapic().unwrap();
    lapic.regs[0x80] = 0x30; // TPR
    t.vcpu.set_lapic(&lapic).unwrap();
    let mut xsave = t.vcpu.get_xsave().unwrap();
    xsave.region[0] = 0x27f; // FCW
    xsave.region[6] = 0x1f80 | 0x8000; // MXCSR with flush-to-zero
    xsave.region[(160 + 3 * 16) / 4] = 0xabcd; // XMM3
    xsave.region[128] |= 3; // XSTATE_BV: x87 and SSE present
                            // SAFETY: the buffer is a full kvm_xsave that KVM_GET_XSAVE just filled, so this
                            // vCPU's XSAVE size is at most 4096 bytes.
    unsafe { t.vcpu.set_xsave(&xsave) }.unwrap();
    let entries = [
        (MSR_STAR, 0x0023_0010_0000_0000),
        (MSR_MTRR_PHYS_BASE0, 0x8000_0006),
    ]
    .map(|(index, data)| kvm_bindings::kvm_msr_entry {
        index,
        data,
        ..Default::default()
    });
    let msrs = kvm_bindings::Msrs::from_entries(&entries).unwrap();
    assert_eq!(t.vcpu.set_msrs(&msrs).unwrap(), 2);
    t.vcpu
        .set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_HALTED,
        })
        .unwrap();
    let mut pic = kvm_irqchip {
        chip_id: KVM_IRQCHIP_PIC_MASTER,
        ..Default::default()
    };
    t.vm.get_irqchip(&mut pic).unwrap();
    pic.chip.pic.imr = 0xfb; // mask IRQ 2 only
    t.vm.set_irqchip(&pic).unwrap();
    let mut ioapic = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    t.vm.get_irqchip(&mut ioapic).unwrap();
    // SAFETY: KVM filled the IOAPIC member of this chip (chip_id IOAPIC); indexing its
    // redirection table reads only initialized bytes.
    unsafe { ioapic.chip.ioapic.redirtbl[5].bits = 0x31 }; // pin 5: vector 0x31
    t.vm.set_irqchip(&ioapic).unwrap();
    let mut pit = t.vm.get_pit2().unwrap();
    pit.channels[2].count = 0x1234;
    pit.channels[2].mode = 2;
    t.vm.set_pit2(&pit).unwrap();
    let clock = kvm_clock_data {
        clock: 123_000_000_000,
        ..Default::default()
    };
    t.vm.set_clock(&clock).unwrap();
}

#[test]
fn state_restored_into_a_fresh_vm_saves_back_the_same() {
    let Some(kvm) = kvm() else { return };
    let a = TestVm::new(&kvm, true);
    make_distinctive(&a);
    let (vcpu, vm) = a.save(&kvm);
    let b = a.restored_copy(&kvm, &vcpu, &vm);
    let (vcpu_b, vm_b) = b.save(&kvm);
    assert_eq!(vcpu_b.regs.rbx, 0x1234_5678_9abc_def0);
    assert_eq!(msr(&vcpu_b, MSR_STAR), 0x0023_0010_0000_0000);
    assert_eq!(vcpu_b.mp_state.mp_state, KVM_MP_STATE_HALTED);
    assert_eq!(
        without_moving_parts(vcpu_b, vm_b),
        without_moving_parts(vcpu, vm)
    );
}

#[test]
fn kvmclock_continues_from_the_saved_value() {
    let Some(kvm) = kvm() else { return };
    let a = TestVm::new(&kvm, true);
    make_distinctive(&a);
    let (vcpu, vm) = a.save(&kvm);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let b = a.restored_copy(&kvm, &vcpu, &vm);
    let after = save_vm(&b.vm).unwrap().clock.clock;
    // The clock does not skip the 50 ms the snapshot "spent on disk".
    assert!(after >= vm.clock.clock, "{after} < {}", vm.clock.clock);
    let moved = after - vm.clock.clock;
    assert!(moved < 40_000_000, "kvmclock moved {moved} ns");
}

/// Whether KVM honours a host write to IA32_TSC on this host (PVM: it accepts the write
/// but the guest TSC stays the host's).
fn tsc_writes_honoured(kvm: &Kvm) -> bool {
    let t = TestVm::new(kvm, true);
    let khz = u64::from(t.vcpu.get_tsc_khz().unwrap());
    let write = |data| {
        let entry = kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_TSC,
            data,
            ..Default::default()
        };
        let msrs = kvm_bindings::Msrs::from_entries(&[entry]).unwrap();
        assert_eq!(t.vcpu.set_msrs(&msrs).unwrap(), 1);
    };
    write(1 << 28);
    let tsc = msr(&save_vcpu(&t.vcpu, &[MSR_IA32_TSC]).unwrap(), MSR_IA32_TSC);
    tsc < (1 << 28) + khz * 1000
}

#[test]
fn guest_tsc_continues_from_the_saved_value_where_kvm_can_offset_it() {
    let Some(kvm) = kvm() else { return };
    let a = TestVm::new(&kvm, true);
    let (vcpu, vm) = a.save(&kvm);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let b = a.restored_copy(&kvm, &vcpu, &vm);
    let (vcpu_b, _) = b.save(&kvm);
    let khz = u64::from(vcpu.tsc_khz.unwrap());
    let moved_ms = msr(&vcpu_b, MSR_IA32_TSC).wrapping_sub(msr(&vcpu, MSR_IA32_TSC)) / khz;
    if tsc_writes_honoured(&kvm) {
        assert!(moved_ms < 40, "TSC moved {moved_ms} ms across the restore");
    } else {
        // PVM: the guest TSC is the host's, so it moved with the host's time.
        assert!((50..1000).contains(&moved_ms), "TSC moved {moved_ms} ms");
    }
}

#[test]
fn running_guest_continues_its_loop_in_a_new_vm() {
    let Some(kvm) = kvm() else { return };
    let mut a = TestVm::real_mode(&kvm, &COUNTER_LOOP);
    for n in 1..=3 {
        assert_eq!(a.next_io(), (0x10, true, n));
    }
    complete_pending_io(&mut a.vcpu).unwrap();
    let (vcpu, vm) = a.save(&kvm);
    let mut b = a.restored_copy(&kvm, &vcpu, &vm);
    assert_eq!(b.next_io(), (0x10, true, 4));
    assert_eq!(b.next_io(), (0x10, true, 5));
}

#[test]
fn completed_in_instruction_keeps_its_data_across_restore() {
    let Some(kvm) = kvm() else { return };
    let mut a = TestVm::real_mode(&kvm, &ECHO_LOOP);
    assert_eq!(a.next_io(), (0x11, false, 0x42));
    complete_pending_io(&mut a.vcpu).unwrap();
    let (vcpu, vm) = a.save(&kvm);
    let mut b = a.restored_copy(&kvm, &vcpu, &vm);
    // The restored vCPU goes on with the OUT of the byte the IN read.
    assert_eq!(b.next_io(), (0x10, true, 0x42));
}

#[test]
fn states_survive_json() {
    let Some(kvm) = kvm() else { return };
    let a = TestVm::new(&kvm, true);
    make_distinctive(&a);
    let (vcpu, vm) = a.save(&kvm);
    let vcpu_json = serde_json::to_vec(&vcpu).unwrap();
    let vm_json = serde_json::to_vec(&vm).unwrap();
    assert_eq!(
        serde_json::from_slice::<VcpuState>(&vcpu_json).unwrap(),
        vcpu
    );
    assert_eq!(serde_json::from_slice::<VmState>(&vm_json).unwrap(), vm);
}

#[test]
fn legacy_fpu_state_is_restored_with_kvm_set_fpu() {
    let Some(kvm) = kvm() else { return };
    let a = TestVm::new(&kvm, true);
    let (mut vcpu, _) = a.save(&kvm);
    let mut fpu = LegacyFpu {
        fcw: 0x27f,
        ..Default::default()
    };
    fpu.xmm[2][0] = 0x5a;
    vcpu.fpu = FpuState::Legacy(Box::new(fpu));
    let b = TestVm::new(&kvm, false);
    restore_vcpu(&b.vcpu, &vcpu).unwrap();
    let got = b.vcpu.get_fpu().unwrap();
    assert_eq!((got.fcw, got.xmm[2][0]), (0x27f, 0x5a));
}

#[test]
fn msr_indices_cover_the_tsc_and_mtrrs_once_each() {
    let Some(kvm) = kvm() else { return };
    let indices = msr_indices_to_save(&kvm).unwrap();
    for wanted in [MSR_IA32_TSC, MSR_MTRR_DEF_TYPE, MSR_MTRR_PHYS_BASE0] {
        assert!(
            indices.contains(&wanted),
            "{wanted:#x} missing: {indices:x?}"
        );
    }
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), indices.len(), "duplicates in {indices:x?}");
}

#[test]
fn an_msr_kvm_refuses_is_named() {
    let Some(kvm) = kvm() else { return };
    let a = TestVm::new(&kvm, true);
    let e = save_vcpu(&a.vcpu, &[MSR_IA32_TSC, 0x1234_5678]).unwrap_err();
    assert!(
        matches!(
            e,
            StateError::MsrNotRead {
                read: 1,
                wanted: 2,
                index: 0x1234_5678
            }
        ),
        "{e}"
    );
}

#[test]
fn irqchip_state_in_the_wrong_slot_is_refused() {
    let Some(kvm) = kvm() else { return };
    let a = TestVm::new(&kvm, true);
    let mut vm = save_vm(&a.vm).unwrap();
    vm.pic_master = vm.ioapic;
    let e = restore_vm(&TestVm::new(&kvm, false).vm, &vm).unwrap_err();
    assert!(
        matches!(
            e,
            StateError::WrongIrqchip {
                expected: KVM_IRQCHIP_PIC_MASTER,
                found: KVM_IRQCHIP_IOAPIC,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn guest_is_told_of_a_pause_only_when_it_uses_kvmclock() {
    let Some(kvm) = kvm() else { return };
    let a = TestVm::new(&kvm, true);
    assert!(!tell_guest_paused(&a.vcpu).unwrap());
    let entry = kvm_bindings::kvm_msr_entry {
        index: MSR_KVM_SYSTEM_TIME_NEW,
        data: 0x8000 | 1, // pvclock page at 0x8000, enabled
        ..Default::default()
    };
    let msrs = kvm_bindings::Msrs::from_entries(&[entry]).unwrap();
    assert_eq!(a.vcpu.set_msrs(&msrs).unwrap(), 1);
    assert!(tell_guest_paused(&a.vcpu).unwrap());
}

#[test]
fn tsc_frequency_below_the_hosts_needs_tsc_scaling() {
    let Some(kvm) = kvm() else { return };
    let a = TestVm::new(&kvm, true);
    let (mut vcpu, _) = a.save(&kvm);
    let host = vcpu.tsc_khz.unwrap();
    vcpu.tsc_khz = Some(host - host / 10);
    let b = TestVm::new(&kvm, false);
    match restore_vcpu(&b.vcpu, &vcpu) {
        Ok(()) => {
            assert!(kvm.check_extension(Cap::TscControl));
            assert_eq!(b.vcpu.get_tsc_khz().unwrap(), host - host / 10);
        }
        Err(e) => {
            assert!(!kvm.check_extension(Cap::TscControl), "{e}");
            assert!(matches!(e, StateError::TscKhz { .. }), "{e}");
        }
    }
}

#[test]
fn ioctl_errors_name_the_ioctl_and_what_the_errno_means() {
    let e = ioctl("KVM_GET_XSAVE")(kvm_ioctls::Error::new(libc::ENOTTY));
    let msg = e.to_string();
    assert!(msg.starts_with("KVM_GET_XSAVE failed: "), "{msg}");
    assert!(
        msg.ends_with("(this host's KVM does not have this ioctl)"),
        "{msg}"
    );
}
