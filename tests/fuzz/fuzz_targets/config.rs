//! Kiln's configuration parsing: config files (JSON and TOML) and the `--disk`, `--net`,
//! size, MAC and `--serial` parsers of `vmm::config`.
//!
//! Input: one selector byte (mod 8: JSON file, TOML file, `--disk`, `--net`, size, MAC,
//! `--serial`, Firecracker-layout JSON file), then the text (invalid UTF-8 replaced, as a command line would not be).
//! Checked beyond "no panic": whatever parses re-validates without panicking and comes
//! back unchanged through Kiln's own textual form (JSON for configs, the flag syntax for
//! devices, `<bytes>B` for sizes, `aa:bb:..` for MACs).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::config::{parse_mac, parse_size, DiskConfig, NetConfig, SerialConfig, VmConfig};

fn config_file(parsed: Result<VmConfig, String>) {
    let Ok(c) = parsed else { return };
    let _ = c.validate();
    let json = serde_json::to_string(&c).expect("a parsed config serializes to JSON");
    let back: VmConfig = serde_json::from_str(&json).expect("Kiln's own JSON parses");
    assert_eq!(back, c, "JSON round trip changed the config: {json}");
}

fn disk(s: &str) {
    let Ok(d) = s.parse::<DiskConfig>() else {
        return;
    };
    assert!(
        !d.path.as_os_str().is_empty(),
        "--disk {s:?} gave an empty path"
    );
    let mut text = format!("path={},readonly={}", d.path.display(), d.readonly);
    if let Some(id) = &d.id {
        text.push_str(&format!(",id={id}"));
    }
    let back: DiskConfig = text.parse().expect("a re-rendered --disk parses");
    assert_eq!(back, d, "--disk {s:?} re-rendered as {text:?}");
}

fn net(s: &str) {
    let Ok(n) = s.parse::<NetConfig>() else {
        return;
    };
    assert!(
        (1..=15).contains(&n.tap.len()),
        "--net {s:?} tap {:?}",
        n.tap
    );
    let mut text = format!("tap={}", n.tap);
    if let Some(m) = &n.mac {
        assert!(parse_mac(m).is_some(), "--net {s:?} accepted mac {m:?}");
        text.push_str(&format!(",mac={m}"));
    }
    let back: NetConfig = text.parse().expect("a re-rendered --net parses");
    assert_eq!(back, n, "--net {s:?} re-rendered as {text:?}");
}

fn size(s: &str) {
    if let Ok(n) = parse_size(s) {
        assert_eq!(parse_size(&format!("{n}B")).ok(), Some(n), "size {s:?}");
    }
}

fn mac(s: &str) {
    if let Some(m) = parse_mac(s) {
        let text = m.map(|b| format!("{b:02x}")).join(":");
        assert_eq!(parse_mac(&text), Some(m), "mac {s:?}");
    }
}

/// A Firecracker config file (`--config-file`): whatever parses converts to Kiln's
/// configuration or a message, and survives a JSON round trip (what `GET /vm/config`
/// answers).
fn firecracker_file(s: &str) {
    let Ok(r) = api::model::VmResources::from_json(s) else {
        return;
    };
    assert!(api::model::VmResources::is_firecracker_layout(s) || s.trim_start().starts_with('{'));
    if let Err(msg) = r.to_vm_config(false) {
        assert!(!msg.is_empty());
    }
    let json = serde_json::to_string(&r).expect("resources serialize");
    let back = api::model::VmResources::from_json(&json).expect("GET /vm/config output parses");
    assert_eq!(back, r, "round trip changed the resources: {json}");
}

fn serial(s: &str) {
    if let Ok(c) = s.parse::<SerialConfig>() {
        let text = String::from(c.clone());
        assert_eq!(text.parse::<SerialConfig>().ok(), Some(c), "--serial {s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let s = text.as_ref();
    match sel % 8 {
        0 => config_file(serde_json::from_str(s).map_err(|e| e.to_string())),
        1 => config_file(toml::from_str(s).map_err(|e| e.to_string())),
        2 => disk(s),
        3 => net(s),
        4 => size(s),
        5 => mac(s),
        6 => serial(s),
        _ => firecracker_file(s),
    }
});
