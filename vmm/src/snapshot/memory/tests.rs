use std::fs::OpenOptions;
use std::path::PathBuf;
use std::time::Instant;

use vm_memory::Bytes;
use vmm_sys_util::tempdir::TempDir;

use super::*;

const MIB: usize = 1 << 20;

/// A scratch directory and a file in it, both gone at the end of the test.
struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            dir: TempDir::new_with_prefix(std::env::temp_dir().join("kiln-snapmem-")).unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.as_path().join(name)
    }

    fn file(&self, name: &str) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path(name))
            .unwrap()
    }
}

fn page(mem: &GuestMemoryMmap, gpa: u64) -> Vec<u8> {
    let mut v = vec![0u8; PAGE_SIZE];
    mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
    v
}

fn file_page(file: &File, offset: u64) -> Vec<u8> {
    let mut v = vec![0u8; PAGE_SIZE];
    file.read_exact_at(&mut v, offset).unwrap();
    v
}

/// Two regions split as around the MMIO gap, small.
fn two_regions() -> Vec<(GuestAddress, usize)> {
    vec![(GuestAddress(0), 2 * MIB), (GuestAddress(1 << 32), MIB)]
}

fn fill(mem: &GuestMemoryMmap, gpa: u64, byte: u8) {
    mem.write_slice(&[byte; PAGE_SIZE], GuestAddress(gpa))
        .unwrap();
}

#[test]
fn full_write_of_mostly_zero_memory_leaves_holes() {
    let s = Scratch::new();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 128 * MIB)]).unwrap();
    for gpa in [0, 1000 * PAGE_SIZE as u64, (128 * MIB - PAGE_SIZE) as u64] {
        fill(&mem, gpa, 0x5a);
    }
    let file = s.file("mem");
    let t = Instant::now();
    let stats = write_memory(&file, &mem, PageSelection::All).unwrap();
    eprintln!(
        "full write of 128 MiB with 3 non-zero pages: {:?}",
        t.elapsed()
    );
    assert_eq!(stats.pages_written, 3);
    assert_eq!(stats.zero_pages_skipped, (128 * MIB / PAGE_SIZE) as u64 - 3);
    // Untouched memory is not even read (transparent huge pages may populate 2 MiB
    // around each written page).
    assert!(
        stats.pages_never_touched >= stats.zero_pages_skipped - 3 * 512,
        "{stats:?}"
    );
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), 128 * MIB as u64);
    let allocated = meta.blocks() * 512;
    eprintln!("allocated: {allocated} bytes");
    assert!(allocated <= 64 * PAGE_SIZE as u64, "{allocated}");
}

#[test]
fn full_write_reads_populated_zero_pages() {
    let s = Scratch::new();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
    fill(&mem, 0x5000, 1);
    fill(&mem, 0x5000, 0);
    fill(&mem, 0x9000, 2);
    let file = s.file("mem");
    let stats = write_memory(&file, &mem, PageSelection::All).unwrap();
    assert_eq!(stats.pages_written, 1);
    assert_eq!(file_page(&file, 0x9000), vec![2; PAGE_SIZE]);
    assert_eq!(file_page(&file, 0x5000), vec![0; PAGE_SIZE]);
}

#[test]
fn full_write_of_file_backed_memory_reads_every_page() {
    let s = Scratch::new();
    let base = s.file("base");
    base.set_len(MIB as u64).unwrap();
    base.write_all_at(&[4; PAGE_SIZE], 0x7000).unwrap();
    // Restored memory: page 7 is not in this process's page tables, yet not zero.
    let mem = map_memory(&base, &[(GuestAddress(0), MIB)]).unwrap();
    let file = s.file("mem");
    let stats = write_memory(&file, &mem, PageSelection::All).unwrap();
    assert_eq!(stats.pages_never_touched, 0);
    assert_eq!(stats.pages_written, 1);
    assert_eq!(file_page(&file, 0x7000), vec![4; PAGE_SIZE]);
}

#[test]
fn full_write_drops_what_the_file_held() {
    let s = Scratch::new();
    let file = s.file("mem");
    file.write_all_at(&[0xff; PAGE_SIZE], 0).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
    write_memory(&file, &mem, PageSelection::All).unwrap();
    assert_eq!(file_page(&file, 0), vec![0; PAGE_SIZE]);
}

#[test]
fn contents_round_trip_through_write_and_map() {
    let s = Scratch::new();
    let mem = GuestMemoryMmap::from_ranges(&two_regions()).unwrap();
    let gpas = [0x1000, 0x1f_f000, 1 << 32, (1 << 32) + 0xf_f000];
    for (i, &gpa) in gpas.iter().enumerate() {
        fill(&mem, gpa, i as u8 + 1);
    }
    let file = s.file("mem");
    write_memory(&file, &mem, PageSelection::All).unwrap();
    // Region 1 starts in the file right after region 0.
    assert_eq!(file_page(&file, 2 * MIB as u64), vec![3; PAGE_SIZE]);
    let back = map_memory(&file, &two_regions()).unwrap();
    assert_eq!(back.num_regions(), 2);
    for (i, &gpa) in gpas.iter().enumerate() {
        assert_eq!(page(&back, gpa), vec![i as u8 + 1; PAGE_SIZE], "{gpa:#x}");
    }
    assert_eq!(page(&back, 0x2000), vec![0; PAGE_SIZE]);
}

#[test]
fn writes_after_mapping_stay_private() {
    let s = Scratch::new();
    let file = s.file("mem");
    file.set_len(MIB as u64).unwrap();
    file.write_all_at(&[7; PAGE_SIZE], 0).unwrap();
    let mem = map_memory(&file, &[(GuestAddress(0), MIB)]).unwrap();
    fill(&mem, 0, 9);
    fill(&mem, 0x8000, 9);
    assert_eq!(page(&mem, 0), vec![9; PAGE_SIZE]);
    assert_eq!(file_page(&file, 0), vec![7; PAGE_SIZE]);
    assert_eq!(file_page(&file, 0x8000), vec![0; PAGE_SIZE]);
}

#[test]
fn a_read_only_file_maps() {
    let s = Scratch::new();
    s.file("mem").set_len(MIB as u64).unwrap();
    let ro = File::open(s.path("mem")).unwrap();
    let mem = map_memory(&ro, &[(GuestAddress(0), MIB)]).unwrap();
    fill(&mem, 0, 1);
    assert_eq!(page(&mem, 0), vec![1; PAGE_SIZE]);
}

#[test]
fn mapping_4_gib_costs_about_what_128_mib_does() {
    let s = Scratch::new();
    let mut times = Vec::new();
    for mib in [128u64, 4096] {
        let regions: Vec<(GuestAddress, usize)> = boot::layout::ram_regions(mib << 20)
            .into_iter()
            .map(|(a, n)| (GuestAddress(a), n as usize))
            .collect();
        let file = s.file(&format!("mem{mib}"));
        file.set_len(mib << 20).unwrap();
        let t = Instant::now();
        let mem = map_memory(&file, &regions).unwrap();
        let took = t.elapsed();
        eprintln!("map_memory of {mib} MiB: {took:?}");
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), mib << 20);
        times.push(took);
    }
    for t in times {
        assert!(t.as_millis() < 50, "{t:?}");
    }
}

#[test]
fn a_file_of_the_wrong_size_is_refused() {
    let s = Scratch::new();
    let file = s.file("mem");
    file.set_len((MIB - PAGE_SIZE) as u64).unwrap();
    let e = map_memory(&file, &[(GuestAddress(0), MIB)]).unwrap_err();
    assert!(matches!(e, MemoryError::FileSize { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("1044480") && msg.contains("1048576"), "{msg}");
}

#[test]
fn a_region_of_partial_pages_is_refused() {
    let s = Scratch::new();
    let file = s.file("mem");
    file.set_len(MIB as u64 + 100).unwrap();
    let e = map_memory(&file, &[(GuestAddress(0), MIB + 100)]).unwrap_err();
    assert!(matches!(e, MemoryError::Unaligned { .. }), "{e}");
}

#[test]
fn diff_writes_only_the_selected_pages() {
    let s = Scratch::new();
    let mem = GuestMemoryMmap::from_ranges(&two_regions()).unwrap();
    let file = s.file("mem");
    for gpa in [0x3000, 0x4000, (1 << 32) + 0x2000] {
        fill(&mem, gpa, 1);
    }
    write_memory(&file, &mem, PageSelection::All).unwrap();
    for gpa in [0x3000, 0x4000, (1 << 32) + 0x2000] {
        fill(&mem, gpa, 2);
    }
    let mut bitmaps = vec![vec![0u64; 512 / 64], vec![0u64; 256 / 64]];
    bitmaps[0][0] = 1 << 3; // page 3, not page 4
    bitmaps[1][0] = 1 << 2;
    let stats = write_memory(&file, &mem, PageSelection::Dirty(bitmaps)).unwrap();
    assert_eq!(stats.pages_written, 2);
    assert_eq!(file_page(&file, 0x3000), vec![2; PAGE_SIZE]);
    assert_eq!(file_page(&file, 0x4000), vec![1; PAGE_SIZE]);
    assert_eq!(
        file_page(&file, 2 * MIB as u64 + 0x2000),
        vec![2; PAGE_SIZE]
    );
}

#[test]
fn diff_into_a_file_of_the_wrong_size_is_refused() {
    let s = Scratch::new();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
    let file = s.file("mem");
    let e = write_memory(&file, &mem, PageSelection::Dirty(vec![vec![0; 4]])).unwrap_err();
    assert!(matches!(e, MemoryError::FileSize { actual: 0, .. }), "{e}");
}

#[test]
fn diff_with_bitmaps_not_fitting_the_regions_is_refused() {
    let s = Scratch::new();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
    let file = s.file("mem");
    file.set_len(MIB as u64).unwrap();
    let e = write_memory(&file, &mem, PageSelection::Dirty(vec![])).unwrap_err();
    assert!(matches!(e, MemoryError::BitmapCount { .. }), "{e}");
    let e = write_memory(&file, &mem, PageSelection::Dirty(vec![vec![!0; 5]])).unwrap_err();
    assert!(
        matches!(e, MemoryError::BitmapLength { expected: 4, .. }),
        "{e}"
    );
}

#[test]
fn writing_into_the_file_memory_is_mapped_from_is_refused() {
    let s = Scratch::new();
    let file = s.file("mem");
    file.set_len(MIB as u64).unwrap();
    let mem = map_memory(&file, &[(GuestAddress(0), MIB)]).unwrap();
    let again = s.file("mem");
    let e = write_memory(&again, &mem, PageSelection::All).unwrap_err();
    assert!(matches!(e, MemoryError::SameFile), "{e}");
    assert_eq!(file.metadata().unwrap().len(), MIB as u64);
}

#[test]
fn sparse_copy_keeps_holes_and_contents() {
    let s = Scratch::new();
    let src = s.file("base");
    src.set_len(64 * MIB as u64).unwrap();
    src.write_all_at(&[1; PAGE_SIZE], 0x5000).unwrap();
    src.write_all_at(&[0; PAGE_SIZE], 0x9000).unwrap(); // data, but zero
    src.write_all_at(&[2; 100], (64 * MIB - 100) as u64)
        .unwrap();
    let dst = s.file("copy");
    dst.set_len(1).unwrap();
    dst.write_all_at(&[9; PAGE_SIZE], 0).unwrap();
    assert_eq!(copy_sparse(&src, &dst).unwrap(), 2);
    let meta = dst.metadata().unwrap();
    assert_eq!(meta.len(), 64 * MIB as u64);
    assert!(
        meta.blocks() * 512 <= 16 * PAGE_SIZE as u64,
        "{}",
        meta.blocks()
    );
    assert_eq!(file_page(&dst, 0), vec![0; PAGE_SIZE]);
    assert_eq!(file_page(&dst, 0x5000), vec![1; PAGE_SIZE]);
    let mut tail = [0u8; 100];
    dst.read_exact_at(&mut tail, (64 * MIB - 100) as u64)
        .unwrap();
    assert_eq!(tail, [2; 100]);
}

#[test]
fn sparse_copy_onto_itself_is_refused() {
    let s = Scratch::new();
    let f = s.file("base");
    f.write_all_at(&[1; PAGE_SIZE], 0).unwrap();
    let e = copy_sparse(&f, &s.file("base")).unwrap_err();
    assert!(matches!(e, MemoryError::CopyOntoItself), "{e}");
    assert_eq!(file_page(&f, 0), vec![1; PAGE_SIZE]);
}

#[test]
fn dirty_runs_coalesce_and_ignore_bits_past_the_region() {
    let mut bitmap = vec![0u64; 5];
    bitmap[0] = 0b1110_0001;
    bitmap[4] = !0; // pages 256..320, of which only 256..300 exist
    assert_eq!(dirty_runs(&bitmap, 300), vec![(0, 1), (5, 3), (256, 44)]);
}

#[test]
fn dirty_runs_are_cut_at_the_chunk_size() {
    let bitmap = vec![!0u64; 8]; // 512 pages
    assert_eq!(
        dirty_runs(&bitmap, 512),
        vec![(0, CHUNK_PAGES), (CHUNK_PAGES as u64, CHUNK_PAGES)]
    );
}
