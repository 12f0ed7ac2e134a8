//! The snapshot state-file container (`vmm::snapshot::format`).
//!
//! Input: one selector byte, then
//! - even: the bytes of a state file, whole;
//! - odd: format version (u32 LE), header length (u16 LE), header, body: framed here
//!   with the magic, lengths and a correct checksum, so that mutations reach the
//!   version, header, host and body checks behind the checksum.
//!
//! The body type below is shaped like a VM's state (nested structs, enums, maps, byte
//! arrays, options, large integers). Checked beyond "no panic": whatever parses
//! serializes again with the same host features, and that file parses back to an equal
//! state; `header_from_bytes` agrees with `from_bytes` on which inputs pass the
//! container's checks.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use vmm::snapshot::format::{
    from_bytes, header_from_bytes, to_bytes, FormatError, HostFeatures, MAGIC,
};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct State {
    config: Config,
    vcpus: Vec<Vcpu>,
    devices: BTreeMap<String, Device>,
    memory: Vec<(u64, u64)>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Config {
    cpus: u8,
    memory: u64,
    cmdline: String,
    kernel: Option<String>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Vcpu {
    id: u32,
    regs: [u64; 4],
    msrs: Vec<(u32, u64)>,
    xsave: Vec<u8>,
    pending: Option<i64>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Device {
    Serial {
        lcr: u8,
        fifo: Vec<u8>,
    },
    Block {
        path: String,
        features: u64,
        queues: Vec<Queue>,
    },
    Rtc(Option<u32>),
    BootTimer,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Queue {
    size: u16,
    ready: bool,
    desc: u64,
    next_avail: u16,
}

fn host() -> HostFeatures {
    HostFeatures {
        pvm: true,
        cpu_vendor: "AuthenticAMD".into(),
        kvm_caps: vec!["KVM_CAP_XSAVE".into(), "KVM_CAP_VCPU_EVENTS".into()],
    }
}

/// A state file around `rest` = version, header length, header, body.
fn framed(rest: &[u8]) -> Option<Vec<u8>> {
    let version = rest.get(..4)?;
    let header_len = u16::from_le_bytes([*rest.get(4)?, *rest.get(5)?]) as usize;
    let header = rest.get(6..6 + header_len)?;
    let body = &rest[6 + header_len..];
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(version);
    out.extend_from_slice(&(header_len as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    crc.update(body);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(body);
    Some(out)
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, rest)) = input.split_first() else {
        return;
    };
    let owned;
    let data = if sel % 2 == 0 {
        rest
    } else {
        let Some(f) = framed(rest) else { return };
        owned = f;
        &owned
    };
    let host = host();
    let header = header_from_bytes(data);
    let parsed = from_bytes::<State>(data, &host);
    if kiln_fuzz::verbose() {
        match &parsed {
            Ok(s) => eprintln!(
                "parsed: {} vCPUs, {} devices",
                s.vcpus.len(),
                s.devices.len()
            ),
            Err(e) => eprintln!("refused: {e}"),
        }
    }
    match (&header, &parsed) {
        (Err(_), Ok(_)) => panic!("from_bytes accepted what header_from_bytes refused"),
        (Ok(_), Err(FormatError::Body(_) | FormatError::HostMismatch { .. })) | (Err(_), _) => {}
        (Ok(_), Err(e)) => panic!("container checks passed, then: {e}"),
        (Ok(_), Ok(_)) => {}
    }
    let Ok(state) = parsed else { return };
    let bytes = to_bytes(&state, &host).expect("a parsed state serializes");
    let back: State = from_bytes(&bytes, &host).expect("Kiln's own state file parses");
    assert_eq!(back, state);
});
