//! The one error type of the boot crate. Every message names the problem and the fix.

use std::path::PathBuf;

/// Everything that can go wrong while loading a kernel and preparing the boot state.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel image {}: {source}: check the path and its permissions", path.display())]
    KernelRead {
        /// Kernel path.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The kernel file is empty.
    #[error("kernel image {} is empty: pass a vmlinux (ELF) or bzImage file", path.display())]
    KernelEmpty {
        /// Kernel path.
        path: PathBuf,
    },
    /// The kernel is neither ELF nor bzImage.
    #[error(
        "kernel image {} is neither an ELF vmlinux (no \\x7fELF magic) nor a bzImage (no \"HdrS\" at 0x202): pass an uncompressed x86-64 vmlinux or an x86 bzImage",
        path.display()
    )]
    KernelUnknownFormat {
        /// Kernel path.
        path: PathBuf,
    },
    /// The ELF file ends before a header or segment it describes.
    #[error(
        "ELF kernel {} is truncated: {what} needs bytes up to offset {needed:#x} but the file has {size:#x}: pass a complete vmlinux",
        path.display()
    )]
    ElfTruncated {
        /// Kernel path.
        path: PathBuf,
        /// Which part is cut off.
        what: String,
        /// End offset that part needs.
        needed: u64,
        /// File size.
        size: u64,
    },
    /// 32-bit (ELFCLASS32) kernel.
    #[error("ELF kernel {} is a 32-bit ELF (ELFCLASS32): Kiln boots 64-bit kernels only; build an x86_64 vmlinux", path.display())]
    Elf32Bit {
        /// Kernel path.
        path: PathBuf,
    },
    /// Any other ELF header problem (endianness, machine, header sizes, no segments).
    #[error("ELF kernel {} is not a usable x86-64 vmlinux: {detail}: pass an x86_64 little-endian vmlinux", path.display())]
    ElfInvalid {
        /// Kernel path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The bzImage ends before the part its header describes.
    #[error(
        "bzImage kernel {} is truncated: the header describes {needed:#x} bytes but the file has {size:#x}: pass a complete bzImage",
        path.display()
    )]
    BzImageTruncated {
        /// Kernel path.
        path: PathBuf,
        /// Size the header describes.
        needed: u64,
        /// File size.
        size: u64,
    },
    /// The bzImage speaks a boot protocol older than 2.06.
    #[error(
        "bzImage kernel {} uses boot protocol {}.{:02}, older than the 2.06 Kiln needs: use a kernel newer than Linux 2.6.22",
        path.display(), version >> 8, version & 0xff
    )]
    BzImageTooOld {
        /// Kernel path.
        path: PathBuf,
        /// Boot protocol version from the setup header.
        version: u16,
    },
    /// The bzImage is not a usable 64-bit bzImage (no 64-bit entry, not loaded high).
    #[error("bzImage kernel {} cannot be booted: {detail}", path.display())]
    BzImageUnsupported {
        /// Kernel path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// The kernel (or a segment of it) lies outside guest RAM.
    #[error(
        "kernel {} needs guest memory [{start:#x}, {end:#x}) but guest RAM {ram}: give the VM more memory (--memory) or use a kernel linked lower",
        path.display()
    )]
    KernelDoesNotFit {
        /// Kernel path.
        path: PathBuf,
        /// Start of the needed range.
        start: u64,
        /// End of the needed range.
        end: u64,
        /// Description of the RAM that is there.
        ram: String,
    },
    /// The kernel wants memory below 1 MiB, where Kiln's boot structures live.
    #[error(
        "kernel {} wants [{start:#x}, {end:#x}), which overlaps Kiln's boot structures below {himem:#x}: use a kernel linked at or above 1 MiB (CONFIG_PHYSICAL_START)",
        path.display(), himem = crate::layout::HIMEM_START
    )]
    KernelTooLow {
        /// Kernel path.
        path: PathBuf,
        /// Start of the offending range.
        start: u64,
        /// End of the offending range.
        end: u64,
    },
    /// The entry point (ELF `e_entry`, PVH note, or a bzImage's `startup_64` at +0x200)
    /// is not inside the loaded image.
    #[error("kernel {} has its {which} entry point {addr:#x} outside its loaded segments [{start:#x}, {end:#x}): the image is corrupt; rebuild it", path.display())]
    BadEntry {
        /// Kernel path.
        path: PathBuf,
        /// "64-bit" or "PVH".
        which: &'static str,
        /// Entry address.
        addr: u64,
        /// Start of the kernel.
        start: u64,
        /// End of the kernel.
        end: u64,
    },
    /// linux-loader rejected the image for a reason not caught earlier.
    #[error("failed to load kernel {}: {source}: check that it is a valid x86-64 vmlinux or bzImage", path.display())]
    KernelLoad {
        /// Kernel path.
        path: PathBuf,
        /// linux-loader's error.
        source: linux_loader::loader::Error,
    },
    /// PVH was requested but the kernel has no PVH entry.
    #[error(
        "PVH boot was requested but kernel {} has no PVH entry (XEN_ELFNOTE_PHYS32_ENTRY note): pass a vmlinux built with CONFIG_PVH=y, or use --boot-protocol auto or linux",
        path.display()
    )]
    PvhUnavailable {
        /// Kernel path.
        path: PathBuf,
    },
    /// The initrd could not be opened or read.
    #[error("cannot read initrd {}: {source}: check the path and its permissions", path.display())]
    InitrdRead {
        /// Initrd path.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The initrd is empty.
    #[error("initrd {} is empty: pass a (compressed) cpio archive or drop the initrd option", path.display())]
    InitrdEmpty {
        /// Initrd path.
        path: PathBuf,
    },
    /// The initrd does not fit between the kernel and the highest address allowed.
    #[error(
        "initrd {} ({size} bytes) does not fit in guest RAM between the kernel's end {floor:#x} and {ceiling:#x} ({available} bytes free): give the VM more memory (--memory) or use a smaller initrd",
        path.display()
    )]
    InitrdTooLarge {
        /// Initrd path.
        path: PathBuf,
        /// Initrd size.
        size: u64,
        /// Lowest address it may use.
        floor: u64,
        /// Address it must end below.
        ceiling: u64,
        /// Bytes between floor and ceiling.
        available: u64,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte at offset {offset}: remove it")]
    CmdlineNul {
        /// Byte offset of the NUL.
        offset: usize,
    },
    /// The command line is too long for the kernel.
    #[error("kernel command line is {len} bytes, but the limit is {max} bytes (plus the terminating NUL): shorten it")]
    CmdlineTooLong {
        /// Command-line length.
        len: usize,
        /// Maximum length without the NUL.
        max: usize,
    },
    /// The VM needs at least one vCPU.
    #[error("a VM needs at least 1 vCPU: pass cpus >= 1")]
    NoCpus,
    /// Too many vCPUs for the MP table.
    #[error("{cpus} vCPUs do not fit in the MP table (at most {max}): use fewer vCPUs")]
    TooManyCpus {
        /// Requested count.
        cpus: u8,
        /// Maximum supported.
        max: u8,
    },
    /// Guest memory too small or not laid out as `layout::ram_regions` says.
    #[error("guest memory does not match the layout: {detail}: create it from layout::ram_regions(mem_size) with at least 2 MiB")]
    MemoryLayout {
        /// What is wrong.
        detail: String,
    },
    /// Two things Kiln placed in guest memory overlap (a bug or an odd kernel).
    #[error("{a} [{a_start:#x}, {a_end:#x}) overlaps {b} [{b_start:#x}, {b_end:#x}): use a kernel linked elsewhere or more memory")]
    Overlap {
        /// First item.
        a: &'static str,
        /// Its start.
        a_start: u64,
        /// Its end.
        a_end: u64,
        /// Second item.
        b: &'static str,
        /// Its start.
        b_start: u64,
        /// Its end.
        b_end: u64,
    },
    /// An unknown boot-protocol name.
    #[error("unknown boot protocol {name:?}: use auto, linux or pvh")]
    UnknownProtocol {
        /// The name given.
        name: String,
    },
    /// A write of a boot structure to guest memory failed.
    #[error("cannot write the {what} at {addr:#x} into guest memory: {source}: create guest memory from layout::ram_regions(mem_size)")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
        /// Guest address.
        addr: u64,
        /// vm-memory's error.
        source: vm_memory::GuestMemoryError,
    },
}

impl BootError {
    /// Shorthand for a failed guest-memory write.
    pub(crate) fn write(
        what: &'static str,
        addr: u64,
    ) -> impl FnOnce(vm_memory::GuestMemoryError) -> BootError {
        move |source| BootError::GuestWrite { what, addr, source }
    }
}
