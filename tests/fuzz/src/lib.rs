//! Shared pieces of Kiln's fuzz targets: a byte reader for the fuzz input, host
//! stand-ins (in-memory files, an interrupt line) and a virtio driver that works the
//! transport's registers and the split rings in guest memory.
//!
//! Input formats are documented on each target and produced for the seed corpus by
//! `make_seeds.py`; keep the two in step.

pub mod driver;
pub mod host;
pub mod input;
pub mod ring;
pub mod script;

/// Whether `KILN_FUZZ_VERBOSE` is set: targets then print what each input did (for
/// checking seeds by hand: `KILN_FUZZ_VERBOSE=1 <target binary> <files>`).
pub fn verbose() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("KILN_FUZZ_VERBOSE").is_some())
}
