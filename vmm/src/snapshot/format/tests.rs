use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vmm_sys_util::tempdir::TempDir;

use super::*;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct State {
    name: String,
    regs: Vec<u64>,
    devices: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct OtherState {
    cpus: u32,
}

fn state() -> State {
    State {
        name: "vm".into(),
        regs: vec![1, 2, u64::MAX],
        devices: [("serial".to_string(), vec![0, 1, 255])].into(),
    }
}

fn host() -> HostFeatures {
    HostFeatures {
        pvm: true,
        cpu_vendor: "GenuineIntel".into(),
        kvm_caps: vec!["KVM_CAP_XSAVE".into(), "KVM_CAP_XCRS".into()],
    }
}

fn tmp_dir() -> TempDir {
    TempDir::new_with_prefix(std::env::temp_dir().join("kiln-snapfmt-")).unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A file image with any version field and header, with a correct checksum.
fn image(version: u32, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    crc.update(body);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn header_json(version: u32, kiln: &str) -> Vec<u8> {
    serde_json::to_vec(&SnapshotHeader {
        kiln_version: kiln.into(),
        format_version: version,
        host: host(),
    })
    .unwrap()
}

fn err_of(bytes: &[u8]) -> FormatError {
    from_bytes::<State>(bytes, &host()).unwrap_err()
}

#[test]
fn round_trip_through_a_file_leaves_only_the_file() {
    let dir = tmp_dir();
    let path = dir.as_path().join("state");
    write_state(&path, &state(), &host()).unwrap();
    assert_eq!(read_state::<State>(&path, &host()).unwrap(), state());
    assert_eq!(names_in(dir.as_path()), ["state"]);
}

#[test]
fn a_second_write_replaces_the_first() {
    let dir = tmp_dir();
    let path = dir.as_path().join("state");
    write_state(&path, &state(), &host()).unwrap();
    let mut s2 = state();
    s2.name = "second".into();
    write_state(&path, &s2, &host()).unwrap();
    assert_eq!(read_state::<State>(&path, &host()).unwrap(), s2);
}

#[test]
fn failed_rename_leaves_nothing_behind() {
    let dir = tmp_dir();
    let target = dir.as_path().join("busy");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("x"), b"x").unwrap();
    let e = write_state(&target, &state(), &host()).unwrap_err();
    assert!(matches!(e, FormatError::Io { .. }), "{e}");
    assert_eq!(names_in(dir.as_path()), ["busy"]);
}

#[test]
fn failed_serialization_creates_no_file() {
    let dir = tmp_dir();
    let path = dir.as_path().join("state");
    // JSON map keys must be strings: a map keyed by sequences does not serialize.
    let bad: BTreeMap<Vec<u8>, u8> = [(vec![1u8], 1u8)].into();
    let e = write_state(&path, &bad, &host()).unwrap_err();
    assert!(matches!(e, FormatError::Serialize(_)), "{e}");
    assert!(names_in(dir.as_path()).is_empty());
}

#[test]
fn bad_magic_is_not_a_snapshot() {
    let mut b = to_bytes(&state(), &host()).unwrap();
    b[0] = b'X';
    let e = err_of(&b);
    assert!(matches!(e, FormatError::NotSnapshot), "{e}");
    assert!(e.to_string().contains("not a Kiln snapshot"));
    assert!(matches!(err_of(b"{\"json\": 1}"), FormatError::NotSnapshot));
}

#[test]
fn every_truncation_names_both_lengths() {
    let b = to_bytes(&state(), &host()).unwrap();
    for len in 0..b.len() {
        match err_of(&b[..len]) {
            FormatError::Truncated { expected, actual } => {
                assert_eq!(actual, len as u64);
                assert!(expected > actual, "{expected} {actual}");
            }
            e => panic!("length {len}: {e}"),
        }
    }
    let msg = err_of(&b[..b.len() - 1]).to_string();
    let (full, short) = (b.len().to_string(), (b.len() - 1).to_string());
    assert!(msg.contains(&full) && msg.contains(&short), "{msg}");
}

#[test]
fn trailing_bytes_are_refused() {
    let mut b = to_bytes(&state(), &host()).unwrap();
    b.push(0);
    let e = err_of(&b);
    assert!(matches!(e, FormatError::TrailingData { .. }), "{e}");
}

#[test]
fn any_flipped_byte_after_the_prefix_is_caught() {
    let b = to_bytes(&state(), &host()).unwrap();
    for i in PREFIX_LEN..b.len() {
        let mut c = b.clone();
        c[i] ^= 0x20;
        assert!(from_bytes::<State>(&c, &host()).is_err(), "byte {i}");
    }
    let mut c = b.clone();
    let last = c.len() - 1;
    c[last] ^= 0x01;
    let e = err_of(&c);
    assert!(matches!(e, FormatError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("corrupted"));
}

#[test]
fn newer_format_names_the_kiln_that_made_it() {
    let b = image(7, &header_json(7, "9.9.9"), b"{}");
    let e = err_of(&b);
    assert!(
        matches!(e, FormatError::NewerFormat { found: 7, .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("newer") && msg.contains("Kiln 9.9.9"), "{msg}");
}

#[test]
fn older_format_names_the_kiln_that_made_it() {
    let b = image(0, &header_json(0, "0.0.1"), b"{}");
    let e = err_of(&b);
    assert!(
        matches!(e, FormatError::OlderFormat { found: 0, .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("older") && msg.contains("Kiln 0.0.1"), "{msg}");
}

#[test]
fn other_format_with_unreadable_header_says_unknown_kiln() {
    let b = image(2, b"\x00\x01binary", b"");
    let msg = err_of(&b).to_string();
    assert!(msg.contains("an unknown Kiln"), "{msg}");
}

#[test]
fn version_field_disagreeing_with_header_is_corruption() {
    let b = image(5, &header_json(FORMAT_VERSION, KILN_VERSION), b"{}");
    let e = err_of(&b);
    assert!(matches!(e, FormatError::Corrupted(_)), "{e}");
}

#[test]
fn absurd_header_length_is_corruption() {
    let mut b = to_bytes(&state(), &host()).unwrap();
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = err_of(&b);
    assert!(matches!(e, FormatError::Corrupted(_)), "{e}");
}

#[test]
fn other_kvm_kind_is_a_host_mismatch() {
    let b = to_bytes(&state(), &host()).unwrap();
    let here = HostFeatures {
        pvm: false,
        ..host()
    };
    let e = from_bytes::<State>(&b, &here).unwrap_err();
    assert!(e.to_string().contains("KVM kind is PVM"), "{e}");
}

#[test]
fn other_cpu_vendor_is_a_host_mismatch() {
    let b = to_bytes(&state(), &host()).unwrap();
    let here = HostFeatures {
        cpu_vendor: "AuthenticAMD".into(),
        ..host()
    };
    let msg = from_bytes::<State>(&b, &here).unwrap_err().to_string();
    assert!(
        msg.contains("GenuineIntel") && msg.contains("AuthenticAMD"),
        "{msg}"
    );
}

#[test]
fn missing_capability_is_a_host_mismatch_naming_it() {
    let b = to_bytes(&state(), &host()).unwrap();
    let here = HostFeatures {
        kvm_caps: vec!["KVM_CAP_XSAVE".into()],
        ..host()
    };
    let msg = from_bytes::<State>(&b, &here).unwrap_err().to_string();
    assert!(
        msg.contains("KVM_CAP_XCRS is present in the snapshot and missing"),
        "{msg}"
    );
}

#[test]
fn extra_host_capability_is_fine() {
    let b = to_bytes(&state(), &host()).unwrap();
    let mut here = host();
    here.kvm_caps.push("KVM_CAP_DEBUGREGS".into());
    assert_eq!(from_bytes::<State>(&b, &here).unwrap(), state());
}

#[test]
fn body_of_another_shape_gives_the_serde_message() {
    let b = to_bytes(&state(), &host()).unwrap();
    let e = from_bytes::<OtherState>(&b, &host()).unwrap_err();
    assert!(matches!(e, FormatError::Body(_)), "{e}");
    assert!(e.to_string().contains("missing field `cpus`"), "{e}");
}

#[test]
fn header_names_this_kiln() {
    let b = to_bytes(&state(), &host()).unwrap();
    let h = header_from_bytes(&b).unwrap();
    assert_eq!(h.kiln_version, KILN_VERSION);
    assert_eq!(h.format_version, FORMAT_VERSION);
    assert_eq!(h.host, host());
}

#[test]
fn oversized_file_is_refused_before_reading() {
    let dir = tmp_dir();
    let path = dir.as_path().join("big");
    let f = File::create(&path).unwrap();
    f.set_len(MAX_FILE_LEN + 1).unwrap();
    let e = read_state::<State>(&path, &host()).unwrap_err();
    assert!(matches!(e, FormatError::TooLarge { .. }), "{e}");
}

#[test]
fn current_host_features_are_restorable_here() {
    if !crate::host::kvm_device_path().exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: no KVM device"
        );
        eprintln!("skipped: no KVM device");
        return;
    }
    let t = Instant::now();
    let h = HostFeatures::current().unwrap();
    eprintln!("host features ({:?}): {h:?}", t.elapsed());
    assert_eq!(h.cpu_vendor.len(), 12);
    h.check_restorable_on(&h).unwrap();
}

/// A state shaped like a VM's (vCPU register blocks as byte arrays, device maps) whose
/// JSON body is about 50 KiB; prints how long a parse takes.
#[test]
fn a_50_kib_body_parses_quickly() {
    let mut devices = BTreeMap::new();
    for i in 0..7 {
        devices.insert(
            format!("device{i}"),
            (0..1024u32).map(|b| b as u8).collect(),
        );
    }
    let s = State {
        name: "x".repeat(100),
        regs: (0..1200u64)
            .map(|r| r.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect(),
        devices,
    };
    let b = to_bytes(&s, &host()).unwrap();
    assert!((45 << 10..60 << 10).contains(&b.len()), "{}", b.len());
    let t = Instant::now();
    let back: State = from_bytes(&b, &host()).unwrap();
    let took = t.elapsed();
    eprintln!("parse of a {} byte state file: {took:?}", b.len());
    assert_eq!(back, s);
    // Release builds take about 0.1 ms; unoptimized test builds about 100 ms.
    assert!(took.as_millis() < 1000, "{took:?}");
}
