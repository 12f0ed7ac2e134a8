use super::*;
use crate::runners::Sample;
use crate::test_args::T;
use clap::Parser;
use vmm::timings::RunTimings;

#[test]
fn memory_sizes_are_whole_mib_and_big_enough() {
    assert_eq!(mem_mib("128M").unwrap(), 128);
    assert_eq!(mem_mib("4G").unwrap(), 4096);
    assert_eq!(mem_mib("16").unwrap(), 16);
    for bad in ["8M", "1536K", "lots"] {
        let e = mem_mib(bad).unwrap_err();
        assert!(e.to_string().contains("at least 16 MiB"), "{bad}: {e}");
    }
}

/// A batch of `runner` whose successful runs have these first-`KVM_RUN` and load times.
fn batch(runner: String, first_run_us: &[u64], load_us: &[f64]) -> BatchReport {
    let samples: Vec<Sample> = first_run_us
        .iter()
        .enumerate()
        .map(|(index, &us)| Sample {
            index,
            ok: true,
            vm: Some(RunTimings {
                first_kvm_run_us: Some(us),
                ..RunTimings::default()
            }),
            ..Sample::default()
        })
        .collect();
    let times: Vec<RestoreTimes> = load_us
        .iter()
        .enumerate()
        .map(|(index, &us)| RestoreTimes {
            index,
            load_reply_us: Some(us),
            ..RestoreTimes::default()
        })
        .collect();
    let b = Batch {
        runner,
        concurrency: 1,
        total_us: 1e6,
        samples,
    };
    metrics::batch_report(b, &times)
}

fn sizes() -> Vec<String> {
    vec!["128M".into(), "4G".into()]
}

#[test]
fn targets_check_time_flatness_and_the_anchor() {
    let batches = [
        batch(cli_name("128M"), &[2000, 2200, 2400], &[]),
        batch(cli_name("4G"), &[2900, 3000, 3100], &[]),
        batch(api_name("128M"), &[2500], &[3000.0]),
    ];
    let t = check_targets(&batches, &sizes(), false);
    let got: Vec<(f64, Option<f64>, bool)> = t.iter().map(|t| (t.limit, t.median, t.met)).collect();
    assert_eq!(
        got,
        [
            (3.0, Some(2.2), true),
            (3.0, Some(3.0), true),
            // 4G's 3.0 ms against 1.25 × 2.2 ms: not flat.
            (2.75, Some(3.0), false),
            (3.75, Some(3.0), true),
        ]
    );
}

#[test]
fn the_other_binarys_load_sets_the_limit() {
    let batches = [
        batch(cli_name("128M"), &[2000], &[]),
        batch(api_name("128M"), &[2500], &[3000.0]),
        batch(other_name("firecracker", "128M"), &[], &[]),
    ];
    // The other batch has no successful load: no comparison is made.
    let t = check_targets(&batches, &sizes()[..1], true);
    assert_eq!(t.len(), 1);
    let mut other = batch(
        other_name("firecracker", "128M"),
        &[0, 0],
        &[8000.0, 10000.0],
    );
    other.batch.runner = other_name("firecracker", "128M");
    let batches = [batches[0].clone(), batches[1].clone(), other];
    let t = check_targets(&batches, &sizes()[..1], true);
    assert_eq!(t.len(), 2);
    assert_eq!((t[1].limit, t[1].median, t[1].met), (4.5, Some(3.0), true));
}

#[test]
fn missing_batches_are_not_met() {
    let t = check_targets(&[], &sizes(), false);
    assert_eq!(t.len(), 3);
    assert!(t.iter().all(|t| !t.met && t.median.is_none()));
    assert!(check_targets(&[], &[], false).is_empty());
}

#[test]
fn snapshot_line_shows_times_and_sizes() {
    let s = SnapshotInfo {
        vmm: "kiln".into(),
        mem_mib: 128,
        boot_us: 25_000.0,
        pause_us: 400.0,
        create_us: 3_250.0,
        state_bytes: 25 * 1024,
        mem_file_bytes: 128 << 20,
        mem_file_allocated_bytes: 8 << 20,
    };
    assert_eq!(
        snapshot_line("128M", &s),
        "  128M (kiln): boot → pages written 25.0 ms; pause 0.400 ms; create 3.250 ms; \
         state file 25.0 KiB; memory file 128 MiB, 8.0 MiB allocated"
    );
}

#[test]
fn a_missing_other_binary_is_an_error() {
    let t =
        T::try_parse_from(["t", "--restore", "--api-other", "/nonexistent/firecracker"]).unwrap();
    let e = run(&t.b, Path::new("/x"), Path::new("/nonexistent")).unwrap_err();
    assert!(matches!(e, RestoreError::OtherMissing(_)), "{e}");
    let t = T::try_parse_from(["t", "--restore", "--restore-mem", "128M,1M"]).unwrap();
    let e = run(&t.b, Path::new("/x"), Path::new("/nonexistent")).unwrap_err();
    assert!(matches!(e, RestoreError::Memory(ref m) if m == "1M"), "{e}");
}
