//! Loading a Linux kernel (ELF vmlinux, bzImage, PVH) into guest memory and preparing
//! the x86-64 boot state: zero page / PVH start info, e820, MP table, page tables and
//! initial vCPU registers, and minimal ACPI tables.
//!
//! [`load`] does the memory side; [`x86`] builds the register state (kvm-bindings types
//! only: this crate never opens `/dev/kvm`). Specs: Documentation/arch/x86/boot.rst (Linux
//! boot protocol), Xen's pvh doc (PVH), Intel MultiProcessor Specification 1.4 (MP table).

#![warn(missing_docs)]

pub mod acpi;
pub mod checksum;
pub mod cmdline;
pub mod e820;
mod error;
pub mod initrd;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod pvh;
pub mod x86;
pub mod zero_page;

#[cfg(test)]
mod test_images;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::str::FromStr;

use vm_memory::{GuestAddress, GuestMemoryBackend};

pub use error::BootError;
pub use loader::KernelFormat;

use layout::{ram_regions, ACPI_RSDP_START, CMDLINE_START, GDT_START, MPTABLE_START, PDE_START};

/// Guest memory as the VMM creates it (regions from [`layout::ram_regions`]).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Which entry to use for an ELF that carries a PVH note (in config files and on the
/// command line: `auto`, `linux` or `pvh`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// PVH when the kernel has the PVH note, else the 64-bit Linux protocol.
    #[default]
    Auto,
    /// Always the 64-bit Linux boot protocol.
    #[serde(rename = "linux", alias = "linux64")]
    Linux64,
    /// Always PVH; error if the kernel has no PVH entry.
    Pvh,
}

impl FromStr for BootProtocol {
    type Err = BootError;

    /// Parses "auto", "linux64" or "pvh" (case-insensitive).
    fn from_str(s: &str) -> Result<Self, BootError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "linux64" | "linux" => Ok(Self::Linux64),
            "pvh" => Ok(Self::Pvh),
            _ => Err(BootError::UnknownProtocol { name: s.to_owned() }),
        }
    }
}

/// What to boot and on what machine.
#[derive(Clone, Copy, Debug)]
pub struct BootConfig<'a> {
    /// Kernel image (ELF vmlinux or bzImage).
    pub kernel: &'a Path,
    /// Optional initrd / initramfs.
    pub initrd: Option<&'a Path>,
    /// Kernel command line (no NUL bytes).
    pub cmdline: &'a str,
    /// Total guest RAM, as laid out by [`layout::ram_regions`].
    pub mem_size: u64,
    /// Number of vCPUs (1..=254).
    pub cpus: u8,
    /// Boot protocol choice.
    pub protocol: BootProtocol,
}

/// Where and how the boot CPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit Linux boot protocol: long mode, paging on (identity map of 0..4 GiB), RSI = zero page.
    Linux64 {
        /// 64-bit entry address.
        rip: u64,
        /// `boot_params` address.
        zero_page: u64,
    },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh {
        /// 32-bit PVH entry address.
        eip: u64,
        /// `hvm_start_info` address.
        start_info: u64,
    },
}

/// The outcome of [`load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// How the BSP starts.
    pub entry: EntryPoint,
    /// Lowest address of the kernel.
    pub kernel_start: u64,
    /// End of the memory the kernel occupies while booting (for a bzImage this includes
    /// its decompression buffer, `init_size`).
    pub kernel_end: u64,
    /// Initrd `(addr, size)`.
    pub initrd: Option<(u64, u64)>,
    /// Command-line address.
    pub cmdline_addr: u64,
    /// Command-line length in bytes, without the terminating NUL.
    pub cmdline_len: usize,
    /// Kernel image format.
    pub format: KernelFormat,
}

/// Checks that `mem` backs every RAM region of a `mem_size` VM.
fn check_memory(mem: &GuestMemoryMmap, mem_size: u64) -> Result<(), BootError> {
    for (start, size) in ram_regions(mem_size) {
        let len = usize::try_from(size).map_err(|_| BootError::MemoryLayout {
            detail: format!("region size {size:#x} does not fit the host address space"),
        })?;
        if !mem.check_range(GuestAddress(start), len) {
            return Err(BootError::MemoryLayout {
                detail: format!(
                    "mem_size {mem_size:#x} needs RAM at [{start:#x}, {:#x}) but guest memory does not cover it",
                    start + size
                ),
            });
        }
    }
    Ok(())
}

/// Errors if any two of the named ranges `(name, start, end)` overlap.
fn check_overlaps(items: &[(&'static str, u64, u64)]) -> Result<(), BootError> {
    for (i, a) in items.iter().enumerate() {
        for b in &items[i + 1..] {
            if a.1 < b.2 && b.1 < a.2 {
                return Err(BootError::Overlap {
                    a: a.0,
                    a_start: a.1,
                    a_end: a.2,
                    b: b.0,
                    b_start: b.1,
                    b_end: b.2,
                });
            }
        }
    }
    Ok(())
}

/// Loads kernel (+ initrd, cmdline) into `mem`, writes zero page or PVH start info, e820,
/// MP table and ACPI tables (for `cpus`), GDT and identity page tables. Everything
/// bounds-checked.
pub fn load(mem: &GuestMemoryMmap, cfg: &BootConfig) -> Result<BootInfo, BootError> {
    if cfg.cpus == 0 {
        return Err(BootError::NoCpus);
    }
    if cfg.cpus > mptable::MAX_CPUS {
        return Err(BootError::TooManyCpus {
            cpus: cfg.cpus,
            max: mptable::MAX_CPUS,
        });
    }
    let e820 = e820::build(cfg.mem_size)?;
    check_memory(mem, cfg.mem_size)?;

    let k = loader::load_kernel(mem, cfg.kernel, cfg.mem_size)?;
    let pvh_entry = match (cfg.protocol, k.pvh_entry) {
        (BootProtocol::Pvh, None) => {
            return Err(BootError::PvhUnavailable {
                path: cfg.kernel.to_owned(),
            })
        }
        (BootProtocol::Linux64, _) => None,
        (_, e) => e,
    };
    let hdr = k.setup_header;

    let cmdline_max = cmdline::max_len(hdr.map(|h| h.cmdline_size));
    let cmdline_addr = cmdline::write(mem, cfg.cmdline, cmdline_max)?;

    let first_end = ram_regions(cfg.mem_size).first().map_or(0, |r| r.0 + r.1);
    let initrd_max = hdr
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(initrd::DEFAULT_INITRD_ADDR_MAX);
    let ceiling = (initrd_max + 1).min(first_end);
    let initrd = match cfg.initrd {
        Some(p) => Some(initrd::load(mem, p, k.reserved_end, ceiling)?),
        None => None,
    };

    let mp_end = MPTABLE_START + mptable::size(cfg.cpus) as u64;
    let mut items = vec![
        ("boot tables", GDT_START, PDE_START + 4 * 0x1000),
        (
            "kernel command line",
            CMDLINE_START,
            CMDLINE_START + cfg.cmdline.len() as u64 + 1,
        ),
        ("MP table", MPTABLE_START, mp_end),
        (
            "ACPI tables",
            ACPI_RSDP_START,
            ACPI_RSDP_START + acpi::size(cfg.cpus) as u64,
        ),
        ("kernel", k.start, k.reserved_end),
    ];
    if let Some((a, s)) = initrd {
        items.push(("initrd", a, a + s));
    }
    check_overlaps(&items)?;

    mptable::write(mem, cfg.cpus)?;
    let rsdp = acpi::write(mem, cfg.cpus)?;
    x86::gdt::write(mem, pvh_entry.is_some())?;
    x86::paging::write(mem)?;
    let entry = match pvh_entry {
        Some(eip) => EntryPoint::Pvh {
            eip,
            start_info: pvh::write(mem, cmdline_addr, initrd, &e820, rsdp)?,
        },
        None => {
            let info = zero_page::ZeroPageInfo {
                header: hdr,
                cmdline_addr,
                cmdline_len: cfg.cmdline.len(),
                initrd,
                e820: &e820,
                acpi_rsdp: rsdp,
            };
            EntryPoint::Linux64 {
                rip: k.entry64,
                zero_page: zero_page::write(mem, &info)?,
            }
        }
    };
    log::info!(
        "kernel {} ({:?}) loaded at [{:#x}, {:#x}), entry {entry:x?}, initrd {initrd:x?}",
        cfg.kernel.display(),
        k.format,
        k.start,
        k.reserved_end
    );
    Ok(BootInfo {
        entry,
        kernel_start: k.start,
        kernel_end: k.reserved_end,
        initrd,
        cmdline_addr,
        cmdline_len: cfg.cmdline.len(),
        format: k.format,
    })
}
