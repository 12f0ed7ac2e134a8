//! A small Firecracker API client over the Unix socket, and a Kiln process serving it.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::client::Client;

use super::{kiln_bin, temp_dir, TestDir};

/// One request on a fresh connection (the shared client, `api::client`): `(status, body)`.
pub fn request(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let what = format!("{method} {path} on {}", sock.display());
    Client::connect(sock, Duration::from_secs(30))
        .and_then(|mut c| c.call_json(method, path, body))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A `kiln api` process with its own socket, its serial output collected.
pub struct ApiVm {
    child: Child,
    /// The API socket.
    pub sock: PathBuf,
    /// The test's directory (socket, disks, files).
    pub dir: TestDir,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

impl ApiVm {
    /// Starts `kiln api --api-sock <dir>/api.sock <args>` and waits for the socket.
    pub fn spawn(name: &str, args: &[&str]) -> Self {
        let dir = temp_dir(name);
        Self::spawn_in(dir, kiln_bin().as_ref(), &["api"], args)
    }

    /// Starts `program <pre> --api-sock <dir>/api.sock <args>` in `dir`.
    pub fn spawn_in(dir: TestDir, program: &Path, pre: &[&str], args: &[&str]) -> Self {
        let sock = dir.join("api.sock");
        let mut child = Command::new(program)
            .args(pre)
            .arg("--api-sock")
            .arg(&sock)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kiln api");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        let vm = Self {
            child,
            sock,
            dir,
            out,
            err,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&vm.sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "no API socket; stderr: {}",
                vm.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        vm
    }

    /// One request.
    pub fn req(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        request(&self.sock, method, path, body)
    }

    /// A request that must succeed with 204.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = self.req(method, path, body);
        assert_eq!(
            status,
            204,
            "{method} {path} {body}: {reply}; stderr: {}",
            self.stderr()
        );
    }

    /// A request that must fail with 400; returns the fault message.
    pub fn fault(&self, method: &str, path: &str, body: &str) -> String {
        let (status, reply) = self.req(method, path, body);
        assert_eq!(status, 400, "{method} {path} {body}: {reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).expect("a JSON fault body");
        v["fault_message"]
            .as_str()
            .expect("fault_message")
            .to_string()
    }

    /// GET returning parsed JSON (must be 200).
    pub fn get(&self, path: &str) -> serde_json::Value {
        let (status, reply) = self.req("GET", path, "");
        assert_eq!(status, 200, "GET {path}: {reply}");
        serde_json::from_str(&reply).expect("a JSON body")
    }

    /// PUT /boot-source with `kernel` and `boot_args`.
    pub fn boot_source(&self, kernel: &Path, boot_args: &str) {
        let body = serde_json::json!({
            "kernel_image_path": kernel,
            "boot_args": boot_args,
        });
        self.ok("PUT", "/boot-source", &body.to_string());
    }

    /// PUT /actions InstanceStart.
    pub fn start(&self) {
        self.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    }

    /// Serial output so far.
    pub fn serial(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits until the serial output contains `needle`.
    pub fn wait_serial(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.serial().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits for the process to end by itself.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(20)); // let the readers finish
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("kiln did not exit on SIGTERM; stderr: {}", self.stderr()))
    }

    /// Kills the process (SIGKILL) and waits for it; the directory stays.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ApiVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
