use super::*;
use crate::runners::Batch;
use crate::test_args::T;
use clap::Parser;
use vmm_sys_util::tempdir::TempDir;

fn spec() -> GuestSpec {
    GuestSpec {
        kernel: "/k/vm.elf".into(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        mem_mib: 128,
    }
}

fn args(extra: &[&str]) -> BenchArgs {
    let mut argv = vec!["t", "--api"];
    argv.extend_from_slice(extra);
    T::try_parse_from(argv).unwrap().b
}

#[test]
fn request_bodies_are_firecrackers() {
    let s = spec();
    let mc: serde_json::Value = serde_json::from_str(&s.machine_config()).unwrap();
    assert_eq!(
        mc,
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128})
    );
    let bs: serde_json::Value = serde_json::from_str(&s.boot_source()).unwrap();
    assert_eq!(bs["kernel_image_path"], "/k/vm.elf");
    assert_eq!(bs["boot_args"], "console=ttyS0");
    assert!(bs.get("initrd_path").is_none());
    let with_initrd = GuestSpec {
        initrd: Some("/k/rd".into()),
        ..spec()
    };
    let bs: serde_json::Value = serde_json::from_str(&with_initrd.boot_source()).unwrap();
    assert_eq!(bs["initrd_path"], "/k/rd");
}

#[test]
fn config_file_holds_both_bodies() {
    let v: serde_json::Value = serde_json::from_str(&spec().config_file()).unwrap();
    assert_eq!(v["machine-config"]["mem_size_mib"], 128);
    assert_eq!(v["boot-source"]["kernel_image_path"], "/k/vm.elf");
    assert_eq!(v["drives"], serde_json::json!([]));
}

#[test]
fn memory_must_be_whole_mib() {
    let k = Path::new("/k");
    assert_eq!(guest(&args(&[]), k).unwrap().mem_mib, 128);
    assert_eq!(guest(&args(&["--memory", "1G"]), k).unwrap().mem_mib, 1024);
    assert_eq!(guest(&args(&["--memory", "64"]), k).unwrap().mem_mib, 64);
    let e = guest(&args(&["--memory", "1500K"]), k).unwrap_err();
    assert!(matches!(e, SetupError::Memory(_)), "{e}");
}

#[test]
fn flags_need_api_and_exclude_io() {
    assert!(T::try_parse_from(["t", "--api-other", "/x"]).is_err());
    assert!(T::try_parse_from(["t", "--api", "--io", "blk"]).is_err());
    let a = args(&["--api-other", "/x/firecracker"]);
    assert_eq!(a.api_other.as_deref(), Some(Path::new("/x/firecracker")));
}

#[test]
fn runners_cover_kiln_and_the_other_binary() {
    let r = runners(&args(&[]), Path::new("/bin/kiln"), Path::new("/k/vm.elf")).unwrap();
    let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, [KILN_NO_API, KILN_API]);
    let r = runners(
        &args(&["--api-other", "/bin/true"]),
        Path::new("/k"),
        Path::new("/k/vm.elf"),
    )
    .unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(r[2].name, "other --no-api: true");
    assert_eq!((r[3].flavor, r[3].mode), (Flavor::Firecracker, Mode::Api));
    let e = runners(
        &args(&["--api-other", "/nonexistent/fc"]),
        Path::new("/k"),
        Path::new("/k/vm.elf"),
    );
    assert!(matches!(e, Err(SetupError::OtherMissing(_))));
}

#[test]
fn commands_carry_each_flavors_flags() {
    let f = RunFiles::new(Path::new("/s"), "r");
    let argv = |flavor, mode| {
        let r = ApiRunner {
            name: "x".into(),
            exe: "/bin/kiln".into(),
            flavor,
            mode,
            guest: spec(),
        };
        let c = r.command(&f);
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        argv(Flavor::Kiln, Mode::Api),
        "api --api-sock /s/r.sock --timings /s/r.json"
    );
    assert_eq!(
        argv(Flavor::Kiln, Mode::NoApi),
        "api --no-api --config-file /s/r.config.json --timings /s/r.json"
    );
    assert_eq!(
        argv(Flavor::Firecracker, Mode::Api),
        "--api-sock /s/r.sock --boot-timer --level Info --log-path /s/r.log"
    );
}

#[test]
fn request_milestones_come_from_the_vmm_timings() {
    let mut t = ApiTimes {
        start_request_us: Some(3000.0),
        ..ApiTimes::default()
    };
    let vm = RunTimings {
        process_start_ns: Some(1_000_000),
        first_kvm_run_us: Some(3400),
        boot_timer_us: Some(3500),
        ..RunTimings::default()
    };
    // Process start 1 ms after the bench's exec timestamp.
    t.add_vm(&vm, 0);
    assert_eq!(t.start_to_first_kvm_run_us, Some(1400.0));
    assert_eq!(t.start_to_boot_timer_us, Some(1500.0));
    let mut none = ApiTimes::default();
    none.add_vm(&vm, 0);
    assert_eq!(none, ApiTimes::default());
}

#[test]
fn a_vmm_exiting_early_is_a_failed_sample() {
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-api-run-")).unwrap();
    let r = ApiRunner {
        name: "x".into(),
        exe: "/bin/false".into(),
        flavor: Flavor::Firecracker,
        mode: Mode::Api,
        guest: spec(),
    };
    let s = r.run_once(0, dir.as_path(), Duration::from_secs(10));
    assert!(!s.ok);
    assert_eq!(s.exit_code, Some(1));
    let err = s.error.unwrap_or_default();
    assert!(err.contains("exited before its API socket"), "{err}");
    assert_eq!(s.api.and_then(|a| a.socket_ready_us), None);
    assert_eq!(std::fs::read_dir(dir.as_path()).unwrap().count(), 0);
    let r = ApiRunner {
        exe: "/nonexistent/fc".into(),
        mode: Mode::NoApi,
        ..r
    };
    let s = r.run_once(1, dir.as_path(), Duration::from_secs(10));
    assert!(s.error.unwrap_or_default().contains("cannot start"));
    assert_eq!(std::fs::read_dir(dir.as_path()).unwrap().count(), 0);
}

fn report(
    runner: &str,
    wall: &[f64],
    api: Option<ApiTimes>,
    vm: Option<RunTimings>,
) -> BatchReport {
    let samples = wall
        .iter()
        .enumerate()
        .map(|(i, &w)| Sample {
            index: i,
            wall_us: w,
            ok: true,
            exit_code: Some(0),
            api: api.clone(),
            vm: vm.clone(),
            ..Sample::default()
        })
        .collect();
    BatchReport::new(Batch {
        runner: runner.into(),
        concurrency: 1,
        total_us: 1e6,
        samples,
    })
}

#[test]
fn targets_compare_no_api_with_kiln_run() {
    let api = ApiTimes {
        socket_ready_us: Some(1500.0),
        start_to_first_kvm_run_us: Some(1200.0),
        ..ApiTimes::default()
    };
    let run = |first| RunTimings {
        first_kvm_run_us: Some(first),
        ..RunTimings::default()
    };
    let batches = [
        report(KILN_RUN, &[10_000.0], None, Some(run(2000))),
        report(KILN_NO_API, &[10_500.0], None, Some(run(2300))),
        report(KILN_API, &[15_000.0], Some(api), None),
    ];
    let t = check_targets(&batches);
    let got: Vec<(&str, f64, Option<f64>, bool)> = t
        .iter()
        .map(|t| (t.metric, t.limit, t.median, t.met))
        .collect();
    assert_eq!(
        got,
        [
            ("socket_ready_us", 2.0, Some(1.5), true),
            ("start_to_first_kvm_run_us", 1.0, Some(1.2), false),
            ("wall_us", 11.0, Some(10.5), true),
            ("first_kvm_run_us", 2.2, Some(2.3), false),
        ]
    );
}

#[test]
fn targets_without_batches_are_not_met() {
    let t = check_targets(&[]);
    assert_eq!(t.len(), 2);
    assert!(t.iter().all(|t| !t.met && t.median.is_none()));
}

#[test]
fn notes_name_what_the_other_binary_lacks() {
    let fc = ApiTimes {
        guest_boot_time_us: Some(900.0),
        ..ApiTimes::default()
    };
    let r = runners(
        &args(&["--api-other", "/bin/true"]),
        Path::new("/k"),
        Path::new("/k/vm.elf"),
    )
    .unwrap();
    let batches = [report("other api: true", &[9000.0], Some(fc), None)];
    let n = notes(&batches, &r);
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(
        n[0].starts_with("other api: true: no --timings"),
        "{}",
        n[0]
    );
    assert!(n[0].contains("first KVM_RUN, VMM ready"), "{}", n[0]);
    assert!(
        n[0].contains("Guest-boot-time is Firecracker's own"),
        "{}",
        n[0]
    );
}

#[test]
fn samples_without_api_times_still_load() {
    let old = r#"{"index":0,"wall_us":5.0,"cpu_us":1.0,"exit_code":0,"ok":true}"#;
    let s: Sample = serde_json::from_str(old).unwrap();
    assert_eq!(s.api, None);
    let new = Sample {
        api: Some(ApiTimes {
            socket_ready_us: Some(1.5),
            ..ApiTimes::default()
        }),
        ..s
    };
    let text = serde_json::to_string(&new).unwrap();
    assert!(text.contains(r#""api":{"socket_ready_us":1.5}"#), "{text}");
    assert_eq!(serde_json::from_str::<Sample>(&text).unwrap(), new);
}
