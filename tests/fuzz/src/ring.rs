//! The driver's side of a split virtqueue (virtio 1.2 §2.7): descriptor table and
//! available ring written into guest memory, the used ring read back. Writes the fuzz
//! input aims outside guest memory are simply dropped, as a real guest's would fault.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where one queue lives in guest memory and what the driver has made available.
#[derive(Debug, Clone, Copy, Default)]
pub struct DriverRing {
    /// Queue size as written to `QueueNum`.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring (driver area) address.
    pub avail: u64,
    /// Used ring (device area) address.
    pub used: u64,
    /// The driver's next available index.
    pub avail_idx: u16,
}

fn put<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap<()>, addr: u64, v: T) {
    let _ = mem.write_obj(v, GuestAddress(addr));
}

impl DriverRing {
    fn modulo(&self) -> u64 {
        u64::from(self.size.max(1))
    }

    /// Writes descriptor `index` (§2.7.5).
    pub fn set_desc(&self, mem: &GuestMemoryMmap<()>, index: u16, d: Desc) {
        let at = self.desc.wrapping_add(16 * u64::from(index));
        put(mem, at, d.addr);
        put(mem, at.wrapping_add(8), d.len);
        put(mem, at.wrapping_add(12), d.flags);
        put(mem, at.wrapping_add(14), d.next);
    }

    /// Adds `head` to the available ring and publishes the new index (§2.7.13).
    pub fn publish(&mut self, mem: &GuestMemoryMmap<()>, head: u16) {
        let slot = u64::from(self.avail_idx) % self.modulo();
        put(mem, self.avail.wrapping_add(4 + 2 * slot), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        put(mem, self.avail.wrapping_add(2), self.avail_idx);
    }

    /// Writes the available index as given (a driver that lies about it).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap<()>, idx: u16) {
        self.avail_idx = idx;
        put(mem, self.avail.wrapping_add(2), idx);
    }

    /// Writes the available ring's `flags` and `used_event` (§2.7.7, §2.7.10).
    pub fn set_suppression(&self, mem: &GuestMemoryMmap<()>, flags: u16, used_event: u16) {
        put(mem, self.avail, flags);
        put(
            mem,
            self.avail.wrapping_add(4 + 2 * self.modulo()),
            used_event,
        );
    }

    /// The used ring's index, if readable.
    pub fn used_idx(&self, mem: &GuestMemoryMmap<()>) -> Option<u16> {
        mem.read_obj(GuestAddress(self.used.wrapping_add(2))).ok()
    }
}

/// One descriptor as the driver writes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Desc {
    /// Buffer guest address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VIRTQ_DESC_F_*`.
    pub flags: u16,
    /// Next descriptor index when `flags` has NEXT.
    pub next: u16,
}
