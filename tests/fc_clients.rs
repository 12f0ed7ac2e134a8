//! Clients written for Firecracker, unchanged, driving the test guest in Kiln through a
//! `firecracker` symlink to the kiln binary: PyPI's firecracker-python (its `Api` class,
//! driven by tests/fc_clients/python_sdk.py) and a `curl --unix-socket` session in the
//! style of Firecracker's getting-started guide. Both configure, start, describe, pause
//! and resume the counting guest, and meet one of Firecracker's fault messages; the VM is
//! stopped Firecracker's way, with SIGTERM.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::{guest, kiln_bin, repo, temp_dir};

/// Longest wait for one step (the guest runs in the host's instruction emulator).
const T: Duration = Duration::from_secs(30);
/// The test guest printing `KILN-GUEST count <n>` about 15 times a second.
const BOOT_ARGS: &str = "console=ttyS0 kiln.mode=count";
/// The venv holding the Python client (resources/out is build output, git-ignored).
const VENV: &str = "resources/out/fc-client-venv";
/// What goes into the venv, all pinned and installed without dependency resolution:
/// firecracker-python (its own dependencies pull docker and more, which `api.py` does not
/// use), the requests versions it pins, and their dependencies.
const PYTHON_PACKAGES: [&str; 7] = [
    "firecracker-python==0.0.5",
    "requests==2.32.3",
    "requests-unixsocket==0.4.1",
    "urllib3==2.8.0",
    "idna==3.20",
    "charset-normalizer==3.5.3",
    "certifi==2026.10.19.post1",
];

/// Whether a missing tool must fail the test rather than skip it.
fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Prints `skipped: <why>`, or fails under `CI=true`.
fn skip(why: &str) {
    assert!(!ci(), "CI=true but {why}");
    eprintln!("skipped: {why}");
}

/// Starts the kiln binary as `firecracker --api-sock <dir>/api.sock`, through a symlink
/// in the test's temp dir.
fn spawn_firecracker(name: &str) -> ApiVm {
    let dir = temp_dir(name);
    let fc = dir.join("firecracker");
    std::os::unix::fs::symlink(kiln_bin(), &fc).expect("creating the firecracker symlink");
    ApiVm::spawn_in(dir, &fc, &[], &[])
}

/// The numbers of the guest's `KILN-GUEST count <n>` lines so far.
fn counts(vm: &ApiVm) -> Vec<u64> {
    let out = vm.serial();
    // Complete lines only: the guest may be in the middle of one.
    out[..out.rfind('\n').map_or(0, |i| i + 1)]
        .lines()
        .filter_map(|l| l.strip_prefix("KILN-GUEST count ")?.trim().parse().ok())
        .collect()
}

/// Asserts the paused guest prints nothing for a while; returns the lines it printed.
fn assert_frozen(vm: &ApiVm) -> usize {
    std::thread::sleep(Duration::from_millis(100)); // output already in flight
    let paused = counts(vm).len();
    std::thread::sleep(Duration::from_millis(600)); // about 9 lines when running
    assert_eq!(counts(vm).len(), paused, "the guest ran while paused");
    paused
}

/// Asserts the guest counts on after the resume, without a gap or a repeat.
fn assert_counts_on(vm: &ApiVm, paused: usize) {
    let next = format!("KILN-GUEST count {}", paused + 2);
    assert!(
        vm.wait_serial(&next, T),
        "no progress after resume: {}",
        vm.serial()
    );
    let nums = counts(vm);
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
}

/// Stops the VM with SIGTERM, as Firecracker is stopped: the process ends and the
/// socket file goes.
fn stop(mut vm: ApiVm) {
    let status = vm.terminate();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", vm.stderr());
    assert!(!vm.sock.exists(), "socket left behind");
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut err, buf) = (child.stderr.take().expect("piped stderr"), stderr.clone());
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            buf.lock().unwrap().push_str(&s);
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line; `None` at its end. Fails after [`T`] without one.
    fn line(&self) -> Option<String> {
        match self.lines.recv_timeout(T) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!("no output for {T:?}: {}", self.stderr()),
        }
    }

    /// The next line, which must be there.
    fn expect_line(&self) -> String {
        self.line()
            .unwrap_or_else(|| panic!("output ended early: {}", self.stderr()))
    }

    /// Writes one line to stdin.
    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("writing to the child");
    }

    /// The remaining stdout lines and the exit status.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        drop(self.child.stdin.take());
        let rest: Vec<String> = std::iter::from_fn(|| self.line()).collect();
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the child") {
                return (status, rest);
            }
            assert!(Instant::now() < deadline, "the child did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `program args`, naming it and the last line of its stderr in the error.
fn run(program: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    Err(format!(
        "`{} {}` failed ({}): {}",
        program.display(),
        args.join(" "),
        out.status,
        last
    ))
}

/// Creates a venv at `dir` with [`PYTHON_PACKAGES`] and the ready marker.
fn make_venv(dir: &Path, marker: &str) -> Result<(), String> {
    let d = dir.to_str().ok_or("the repository path is not UTF-8")?;
    run(Path::new("python3"), &["-m", "venv", d])?;
    let mut args = vec![
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--quiet",
    ];
    args.extend(["--timeout", "15", "--retries", "1", "--no-deps"]);
    args.extend(PYTHON_PACKAGES);
    run(&dir.join("bin/python"), &args)?;
    std::fs::write(dir.join("kiln-ready"), marker).map_err(|e| format!("writing the marker: {e}"))
}

/// The venv's python with the client installed, creating the venv on first use (built
/// beside it and renamed into place, so a half-made venv is never used).
fn client_python() -> Result<PathBuf, String> {
    let venv = repo().join(VENV);
    let python = venv.join("bin/python");
    let marker = PYTHON_PACKAGES.join("\n");
    let ready = || std::fs::read_to_string(venv.join("kiln-ready")).is_ok_and(|m| m == marker);
    if ready() {
        return Ok(python);
    }
    let out = venv.parent().expect("resources/out");
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let partial = out.join(format!("fc-client-venv.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let made = make_venv(&partial, &marker).and_then(|()| {
        if std::fs::rename(&partial, &venv).is_ok() || ready() {
            return Ok(());
        }
        // An outdated venv is in the way.
        let _ = std::fs::remove_dir_all(&venv);
        std::fs::rename(&partial, &venv).map_err(|e| format!("renaming the venv: {e}"))
    });
    let _ = std::fs::remove_dir_all(&partial);
    made.map(|()| python)
}

#[test]
fn firecracker_python_drives_kiln_unchanged() {
    let python = match client_python() {
        Ok(p) => p,
        Err(why) => return skip(&format!("cannot install firecracker-python: {why}")),
    };
    let t0 = Instant::now();
    let kernel = &guest().elf;
    let vm = spawn_firecracker("fc-python");
    let drive = vm.dir.join("rootfs.img");
    std::fs::write(&drive, vec![0u8; 1 << 20]).unwrap();
    // The client puts the socket path into a URL host, which requests lowercases: a
    // relative path (from the socket's directory) keeps it lowercase.
    let mut script = Proc::spawn(
        Command::new(&python)
            .arg(repo().join("tests/fc_clients/python_sdk.py"))
            .arg(vm.sock.file_name().unwrap())
            .args([kernel.as_os_str(), OsStr::new(BOOT_ARGS), drive.as_os_str()])
            .current_dir(&*vm.dir),
    );
    assert_eq!(
        script.expect_line(),
        "fc-client: running",
        "{}",
        script.stderr()
    );
    assert!(vm.wait_serial("KILN-GUEST count 3", T), "{}", vm.serial());
    script.send("go");
    assert_eq!(
        script.expect_line(),
        "fc-client: paused",
        "{}",
        script.stderr()
    );
    let paused = assert_frozen(&vm);
    script.send("go");
    let line = script.expect_line();
    let (status, rest) = script.finish();
    assert!(status.success() && rest.is_empty(), "{status}: {rest:?}");
    let json = line
        .strip_prefix("fc-client: result ")
        .unwrap_or_else(|| panic!("{line}"));
    let seen: serde_json::Value = serde_json::from_str(json).unwrap();
    println!("firecracker-python saw: {seen:#}");

    for (step, code) in seen["status"].as_object().unwrap() {
        let want = if step == "version" || step.starts_with("describe") || step == "vm_config" {
            200
        } else {
            204
        };
        assert_eq!(code, want, "{step}");
    }
    assert!(seen["version"]["firecracker_version"]
        .as_str()
        .unwrap()
        .starts_with("1."));
    let before = &seen["describe_before"];
    assert_eq!(before["state"], "Not started", "{before}");
    assert_eq!(before["id"], "anonymous-instance", "{before}");
    assert!(before["app_name"].is_string(), "{before}"); // Kiln answers "Kiln"
    assert!(before["vmm_version"].is_string(), "{before}");
    assert_eq!(seen["state_started"], "Running");
    assert_eq!(seen["state_paused"], "Paused");
    assert_eq!(seen["state_resumed"], "Running");
    let cfg = &seen["vm_config"];
    assert_eq!(cfg["machine-config"]["vcpu_count"], 1, "{cfg}");
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 32, "{cfg}");
    assert_eq!(
        cfg["boot-source"]["kernel_image_path"],
        kernel.to_str().unwrap(),
        "{cfg}"
    );
    assert_eq!(cfg["boot-source"]["boot_args"], BOOT_ARGS, "{cfg}");
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs", "{cfg}");
    assert_eq!(
        cfg["drives"][0]["path_on_host"],
        drive.to_str().unwrap(),
        "{cfg}"
    );
    assert_eq!(
        seen["error_after_start"],
        "API fault: The requested operation is not supported after starting the microVM."
    );

    assert_counts_on(&vm, paused);
    stop(vm);
    println!("took {:?}", t0.elapsed());
}

/// How every curl of the session starts: the socket, and the status code after the body.
const CURL: &str = r#"curl -sS -w ' HTTP %{http_code}\n' --unix-socket "$API_SOCKET""#;

/// Runs `curl` with the [`CURL`] options and `args` as one shell command line (printed
/// first, so it can be copied), with `API_SOCKET` and `KERNEL` in its environment;
/// returns the status code and the body.
fn curl(vm: &ApiVm, args: &str) -> (u16, String) {
    let cmd = format!("{CURL} {args}");
    println!("$ {cmd}");
    let p = Proc::spawn(
        Command::new("bash")
            .args(["-c", &cmd])
            .env("API_SOCKET", &vm.sock)
            .env("KERNEL", &guest().elf),
    );
    let (status, lines) = p.finish();
    let out = lines.join("\n");
    println!("{out}");
    assert!(status.success(), "{status}: {out}");
    let (body, code) = out
        .rsplit_once(" HTTP ")
        .unwrap_or_else(|| panic!("no status: {out}"));
    (code.trim().parse().unwrap(), body.to_string())
}

/// A curl request that must answer 204 with no body.
fn curl_ok(vm: &ApiVm, args: &str) {
    assert_eq!(curl(vm, args), (204, String::new()));
}

/// `GET /` with curl: the VM's state.
fn curl_state(vm: &ApiVm) -> String {
    let (code, body) = curl(vm, "http://localhost/");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["state"].as_str().unwrap().to_string()
}

#[test]
fn a_curl_session_configures_starts_pauses_and_resumes() {
    if Command::new("curl").arg("--version").output().is_err() {
        return skip("curl not installed");
    }
    let t0 = Instant::now();
    let _ = guest();
    let vm = spawn_firecracker("fc-curl");
    println!(
        "# API_SOCKET: the socket of `firecracker --api-sock \"$API_SOCKET\"`; KERNEL: the guest"
    );
    assert_eq!(curl_state(&vm), "Not started");
    let (code, body) = curl(
        &vm,
        r#"-X PUT http://localhost/machine-config --data '{"vcpu_count": 1, "mem_size_mb": 32}'"#,
    );
    assert_eq!(code, 400, "{body}");
    let fault: serde_json::Value = serde_json::from_str(&body).unwrap();
    let m = fault["fault_message"].as_str().unwrap();
    assert!(
        m.contains("unknown field `mem_size_mb`, expected one of"),
        "{m}"
    );
    curl_ok(
        &vm,
        r#"-X PUT http://localhost/machine-config --data '{"vcpu_count": 1, "mem_size_mib": 32}'"#,
    );
    curl_ok(
        &vm,
        r#"-X PUT http://localhost/boot-source --data "{\"kernel_image_path\": \"$KERNEL\", \"boot_args\": \"console=ttyS0 kiln.mode=count\"}""#,
    );
    curl_ok(
        &vm,
        r#"-X PUT http://localhost/actions --data '{"action_type": "InstanceStart"}'"#,
    );
    assert_eq!(curl_state(&vm), "Running");
    assert!(vm.wait_serial("KILN-GUEST count 3", T), "{}", vm.serial());

    curl_ok(
        &vm,
        r#"-X PATCH http://localhost/vm --data '{"state": "Paused"}'"#,
    );
    assert_eq!(curl_state(&vm), "Paused");
    let paused = assert_frozen(&vm);
    curl_ok(
        &vm,
        r#"-X PATCH http://localhost/vm --data '{"state": "Resumed"}'"#,
    );
    assert_eq!(curl_state(&vm), "Running");
    assert_counts_on(&vm, paused);
    stop(vm);
    println!("took {:?}", t0.elapsed());
}
