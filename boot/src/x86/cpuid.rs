//! Per-vCPU fix-ups of the CPUID table KVM reports as supported (`KVM_GET_SUPPORTED_CPUID`)
//! before it is set with `KVM_SET_CPUID2`. Leaf layouts: Intel SDM vol. 2A, "CPUID".
//!
//! Topology presented: one package, `cpus` cores, one thread per core, APIC id = vCPU index.
//! - Leaf 1: initial APIC id (EBX bits 31:24), CLFLUSH line size 64 bytes (EBX bits 15:8 = 8),
//!   addressable logical processors (EBX bits 23:16 = cpus), HTT (EDX bit 28) when cpus > 1,
//!   hypervisor present (ECX bit 31).
//! - Leaf 4: cores per package (EAX bits 31:26) and threads sharing each cache (EAX bits 25:14: 1 for
//!   L1/L2, all cores for L3).
//! - Leaves 0xB / 0x1F: SMT level (1 thread, shift 0) and core level (`cpus`, shift
//!   ceil(log2(cpus))), x2APIC id in EDX.
//! - Leaf 6 (thermal/power) and leaf 0xA (architectural PMU) cleared: not virtualised here.
//! - Leaf 0x4000_0000: kept when KVM provides it (its "KVMKVMKVM" leaves drive kvmclock);
//!   otherwise a "KilnKilnKiln" signature leaf is added.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// The hypervisor signature leaf.
pub const HYPERVISOR_LEAF: u32 = 0x4000_0000;
/// Signature Kiln reports when KVM provides none (EBX, ECX, EDX).
pub const KILN_SIGNATURE: &[u8; 12] = b"KilnKilnKiln";
/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: hyper-threading / multi-core package.
const EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_SIZE: u32 = 8;

/// Bits needed to number `n` items (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn fix_leaf1(e: &mut kvm_cpuid_entry2, vcpu_id: u8, cpus: u8) {
    e.ebx =
        (e.ebx & 0xff) | (CLFLUSH_SIZE << 8) | (u32::from(cpus) << 16) | (u32::from(vcpu_id) << 24);
    if cpus > 1 {
        e.edx |= EDX_HTT;
    } else {
        e.edx &= !EDX_HTT;
    }
    e.ecx |= ECX_HYPERVISOR;
}

fn fix_leaf4(e: &mut kvm_cpuid_entry2, cpus: u8) {
    if e.eax & 0x1f == 0 {
        return; // no more caches
    }
    let level = (e.eax >> 5) & 0x7;
    let cores_m1 = (u32::from(cpus) - 1).min(63);
    let sharing_m1 = if level >= 3 { u32::from(cpus) - 1 } else { 0 };
    e.eax = (e.eax & 0x3fff) | (sharing_m1 << 14) | (cores_m1 << 26);
}

fn fix_topology(e: &mut kvm_cpuid_entry2, vcpu_id: u8, cpus: u8) {
    let sub = e.index & 0xff;
    match sub {
        0 => {
            e.eax = 0;
            e.ebx = 1;
            e.ecx = (1 << 8) | sub;
        }
        1 => {
            e.eax = bits_for(u32::from(cpus));
            e.ebx = u32::from(cpus);
            e.ecx = (2 << 8) | sub;
        }
        _ => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = sub;
        }
    }
    e.edx = u32::from(vcpu_id);
}

/// Applies the fix-ups above to `cpuid` for vCPU `vcpu_id` of `cpus`.
pub fn fixup(cpuid: &mut CpuId, vcpu_id: u8, cpus: u8) {
    let cpus = cpus.max(1);
    let mut has_hypervisor_leaf = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => fix_leaf1(e, vcpu_id, cpus),
            4 => fix_leaf4(e, cpus),
            6 | 0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => fix_topology(e, vcpu_id, cpus),
            HYPERVISOR_LEAF => has_hypervisor_leaf = true,
            _ => {}
        }
    }
    if !has_hypervisor_leaf {
        let w = |i: usize| {
            u32::from_le_bytes([
                KILN_SIGNATURE[i],
                KILN_SIGNATURE[i + 1],
                KILN_SIGNATURE[i + 2],
                KILN_SIGNATURE[i + 3],
            ])
        };
        let leaf = kvm_cpuid_entry2 {
            function: HYPERVISOR_LEAF,
            eax: HYPERVISOR_LEAF,
            ebx: w(0),
            ecx: w(4),
            edx: w(8),
            ..Default::default()
        };
        if let Err(e) = cpuid.push(leaf) {
            log::warn!("cannot add the Kiln hypervisor CPUID leaf: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            leaf(0, 0, 0x1f, 0, 0, 0),
            leaf(1, 0, 0x806f8, 0x0012_3407, 0x7ffa_3223, 0x1f8b_fbff),
            leaf(4, 0, 0x0000_0121, 1, 2, 3),
            leaf(4, 1, 0x0000_0122, 1, 2, 3),
            leaf(4, 2, 0x0000_0143, 1, 2, 3),
            leaf(4, 3, 0x0000_0163, 1, 2, 3),
            leaf(4, 4, 0, 0, 0, 0),
            leaf(6, 0, 4, 0, 1, 0),
            leaf(0xa, 0, 0x0703_0902, 0, 0, 0x603),
            leaf(0xb, 0, 1, 2, 0x100, 9),
            leaf(0xb, 1, 4, 8, 0x201, 9),
            leaf(0xb, 2, 0, 0, 2, 9),
        ])
        .unwrap()
    }

    #[test]
    fn leaf1_and_hypervisor() {
        let mut c = sample();
        fixup(&mut c, 3, 4);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx, 0x0304_0807);
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        let hv = find(&c, HYPERVISOR_LEAF, 0);
        let sig: Vec<u8> = [hv.ebx, hv.ecx, hv.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&sig, b"KilnKilnKiln");

        let mut one = sample();
        fixup(&mut one, 0, 1);
        assert_eq!(find(&one, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn kvm_signature_kept() {
        let kvm = leaf(
            HYPERVISOR_LEAF,
            0,
            0x4000_0001,
            0x4b4d_564b,
            0x564b_4d56,
            0x4d,
        );
        let mut c = CpuId::from_entries(&[leaf(1, 0, 0, 0, 0, 0), kvm]).unwrap();
        fixup(&mut c, 0, 2);
        assert_eq!(c.as_slice().len(), 2);
        assert_eq!(find(&c, HYPERVISOR_LEAF, 0), kvm);
    }

    #[test]
    fn cache_and_topology() {
        let mut c = sample();
        fixup(&mut c, 5, 6);
        // L1/L2: one thread; L3: all 6 cores; 6 cores per package.
        assert_eq!(find(&c, 4, 0).eax, 0x121 | (5 << 26));
        assert_eq!(find(&c, 4, 2).eax, 0x143 | (5 << 26));
        assert_eq!(find(&c, 4, 3).eax, 0x163 | (5 << 14) | (5 << 26));
        assert_eq!(find(&c, 4, 4).eax, 0);
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        let inv = find(&c, 0xb, 2);
        assert_eq!((inv.eax, inv.ebx, inv.ecx, inv.edx), (0, 0, 2, 5));
        assert_eq!(find(&c, 6, 0), leaf(6, 0, 0, 0, 0, 0));
        assert_eq!(find(&c, 0xa, 0), leaf(0xa, 0, 0, 0, 0, 0));
    }

    #[test]
    fn bits() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 254].map(bits_for),
            [0, 1, 2, 2, 3, 3, 4, 8]
        );
    }
}
