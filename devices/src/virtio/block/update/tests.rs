use std::io::Write;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::super::request::*;
use super::super::tests::{image, rig, DATA};
use super::super::*;

/// Capacity as the configuration space tells the driver.
fn config_capacity(blk: &Block) -> u64 {
    u64::from_le_bytes(blk.config_space()[..8].try_into().unwrap())
}

fn filled(sectors: usize, byte: u8) -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().write_all(&vec![byte; sectors * 512]).unwrap();
    f
}

#[test]
fn replace_disk_switches_image_and_capacity() {
    let mut r = rig(false, 8 * 512, 0);
    let new = filled(32, 0x7e);
    r.blk.replace_disk(new.as_path()).unwrap();
    assert_eq!(r.blk.capacity(), 32);
    assert_eq!(config_capacity(&r.blk), 32);
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 31, 512, true).0, VIRTIO_BLK_S_OK);
    let mut buf = [0u8; 512];
    r.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf.iter().all(|&b| b == 0x7e));
    let m = r.blk.metrics().snapshot();
    assert_eq!((m.update_count, m.update_fails), (1, 0));
}

#[test]
fn replace_disk_refuses_a_missing_file_and_keeps_the_old_one() {
    let mut r = rig(false, 8 * 512, 0);
    let e = r.blk.replace_disk(Path::new("/nonexistent/new.img"));
    assert!(matches!(e, Err(Error::DiskOpen { .. })), "{e:?}");
    assert_eq!(r.blk.capacity(), 8);
    assert_eq!(config_capacity(&r.blk), 8);
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 7, 512, true).0, VIRTIO_BLK_S_OK);
    let mut buf = [0u8; 512];
    r.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf.iter().all(|&b| b == 7), "still the old image");
    assert_eq!(r.blk.metrics().snapshot().update_fails, 1);
}

#[test]
fn replace_disk_moves_the_lock() {
    let old = image(512);
    let mut blk = Block::new(BlockConfig {
        path: old.as_path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    let new = filled(1, 0);
    blk.replace_disk(new.as_path()).unwrap();
    let open_rw = |p: &Path| {
        Block::new(BlockConfig {
            path: p.to_path_buf(),
            ..Default::default()
        })
    };
    assert!(matches!(
        open_rw(new.as_path()),
        Err(Error::DiskLocked { .. })
    ));
    assert!(open_rw(old.as_path()).is_ok(), "old image still locked");
}

#[test]
fn replace_disk_keeps_read_only() {
    let mut r = rig(true, 512, 0);
    let new = filled(4, 0);
    r.blk.replace_disk(new.as_path()).unwrap();
    assert_eq!(r.req(VIRTIO_BLK_T_OUT, 0, 512, false).0, VIRTIO_BLK_S_IOERR);
    // Opened read-only: a shared lock, so another reader may open it.
    let reader = Block::new(BlockConfig {
        path: new.as_path().to_path_buf(),
        read_only: true,
        ..Default::default()
    });
    assert!(reader.is_ok());
}

#[test]
fn replacing_with_the_same_path_rereads_its_size() {
    let mut r = rig(false, 8 * 512, 0);
    let path = r._file.as_path().to_path_buf();
    r._file.as_file().set_len(16 * 512).unwrap();
    r.blk.replace_disk(&path).unwrap();
    assert_eq!(r.blk.capacity(), 16);
    assert_eq!(config_capacity(&r.blk), 16);
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 15, 512, true).0, VIRTIO_BLK_S_OK);
}

#[test]
fn a_derived_serial_follows_the_new_image() {
    let old = image(512);
    let mut blk = Block::new(BlockConfig {
        path: old.as_path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    let before = blk.disk.id;
    let new = filled(1, 0);
    blk.replace_disk(new.as_path()).unwrap();
    assert_ne!(blk.disk.id, before);
    assert!(blk.disk.id.starts_with(b"kiln"));
}

#[test]
fn a_configured_serial_stays() {
    let mut r = rig(false, 512, 0);
    let new = filled(1, 0);
    r.blk.replace_disk(new.as_path()).unwrap();
    assert_eq!(&r.blk.disk.id[..9], b"disk-one\0");
}
