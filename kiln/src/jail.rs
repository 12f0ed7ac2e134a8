//! `kiln run --jail DIR`: the essence of Firecracker's jailer, built in. Before the VM
//! is built, Kiln moves into new mount, PID, IPC and UTS namespaces, makes `DIR` its
//! root with nothing in it but what the VM needs (the kernel, initrd and disks bind-
//! mounted, its own `/dev/kvm` and `/dev/net/tun` nodes, a `/proc` of the new PID
//! namespace), sets resource limits, optionally joins a cgroup, drops to `--uid` /
//! `--gid`, and only then builds the VM.
//!
//! The new PID namespace needs a fork: the parent stays outside, forwards SIGINT,
//! SIGTERM and SIGHUP to the jailed Kiln and exits with its status.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use vmm::config::VmConfig;

/// What `--jail` asks for.
#[derive(Debug, Clone)]
pub struct JailSpec {
    /// The directory that becomes `/`.
    pub dir: PathBuf,
    /// The user and group to run as (both or neither).
    pub ids: Option<(u32, u32)>,
    /// A cgroup (v2 directory or v1 controller directory) to join.
    pub cgroup: Option<PathBuf>,
}

/// Errors from setting up the jail; each names the step and the fix.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Not root.
    #[error("--jail needs root (it creates namespaces, mounts and device nodes): run kiln as root, with --uid/--gid for the VM")]
    NotRoot,
    /// The jail directory is unusable.
    #[error("jail directory {0}: {1}; create an empty directory for it")]
    Dir(PathBuf, String),
    /// A step failed.
    #[error("setting up the jail: {what}: {source}")]
    Step {
        /// The step.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Step { what, source }
}

fn cstr(p: &Path) -> CString {
    // Paths from the OS hold no NUL byte.
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn check(rc: libc::c_int, what: impl Into<String>) -> Result<(), JailError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(step(what)(std::io::Error::last_os_error()))
    }
}

/// Files the VM needs inside the jail: `(host path, name in the jail, read-only)`.
fn files(cfg: &VmConfig) -> Vec<(PathBuf, String, bool)> {
    let mut out = Vec::new();
    if let Some(k) = &cfg.kernel {
        out.push((k.clone(), "kernel".to_string(), true));
    }
    if let Some(i) = &cfg.initrd {
        out.push((i.clone(), "initrd".to_string(), true));
    }
    for (n, d) in cfg.disks.iter().enumerate() {
        out.push((d.path.clone(), format!("disk{n}"), d.readonly));
    }
    out
}

/// The config as the jailed process sees it: every file at its name in the jail.
fn jailed_config(cfg: &VmConfig) -> VmConfig {
    let mut c = cfg.clone();
    c.kernel = c.kernel.as_ref().map(|_| PathBuf::from("/kernel"));
    c.initrd = c.initrd.as_ref().map(|_| PathBuf::from("/initrd"));
    for (n, d) in c.disks.iter_mut().enumerate() {
        d.path = PathBuf::from(format!("/disk{n}"));
    }
    c
}

/// Enters the jail. Returns in the jailed child with the config to build the VM from;
/// in the parent it waits for the child and returns its exit status as `Err(Ok(code))`.
pub fn enter(spec: &JailSpec, cfg: &VmConfig) -> Result<VmConfig, Result<u8, JailError>> {
    prepare(spec).map_err(Err)?;
    // Only the PID namespace here: it applies to the child; the parent stays where it
    // is (its mounts, its root) to clean up after the child.
    // SAFETY: unshare with a namespace flag only.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    check(rc, "unshare (new PID namespace)").map_err(Err)?;
    // SAFETY: Kiln has one thread here (no VM yet), so the child may do anything.
    match unsafe { libc::fork() } {
        -1 => Err(Err(step("fork")(std::io::Error::last_os_error()))),
        0 => {
            let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
            // SAFETY: unshare with namespace flags only.
            let rc = unsafe { libc::unshare(flags) };
            check(rc, "unshare (new mount, IPC and UTS namespaces)").map_err(Err)?;
            build_root(spec, cfg).map_err(Err)?;
            Ok(jailed_config(cfg))
        }
        child => {
            let code = supervise(child);
            clean(spec, cfg);
            Err(Ok(code))
        }
    }
}

/// What the jail directory held while the VM ran, removed once the jailed Kiln has
/// exited (its mount namespace, and so every mount in the jail, is gone by then).
fn clean(spec: &JailSpec, cfg: &VmConfig) {
    let root = &spec.dir;
    for (_, name, _) in files(cfg) {
        let _ = std::fs::remove_file(root.join(name));
    }
    let _ = std::fs::remove_file(root.join("dev/kvm"));
    let _ = std::fs::remove_file(root.join("dev/net/tun"));
    for d in ["dev/net", "dev", "proc"] {
        let _ = std::fs::remove_dir(root.join(d));
    }
}

/// Checks before anything changes: root, a usable directory; joins the cgroup.
fn prepare(spec: &JailSpec) -> Result<(), JailError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    let meta = std::fs::metadata(&spec.dir)
        .map_err(|e| JailError::Dir(spec.dir.clone(), e.to_string()))?;
    if !meta.is_dir() {
        return Err(JailError::Dir(spec.dir.clone(), "not a directory".into()));
    }
    let empty = std::fs::read_dir(&spec.dir)
        .map(|mut d| d.next().is_none())
        .map_err(|e| JailError::Dir(spec.dir.clone(), e.to_string()))?;
    if !empty {
        return Err(JailError::Dir(spec.dir.clone(), "not empty".into()));
    }
    if let Some(cg) = &spec.cgroup {
        let procs = cg.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(step(format!("joining cgroup {}", cg.display())))?;
    }
    Ok(())
}

/// The parent outside the PID namespace: forwards stop signals, reaps the child and
/// answers with its status (128 + N for a signal).
fn supervise(child: libc::pid_t) -> u8 {
    // SAFETY: signal-set calls on a local set; sigwaitinfo/waitpid/kill on our child.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut status = 0;
            match libc::waitpid(child, &mut status, libc::WNOHANG) {
                p if p == child => {
                    return if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status) as u8
                    } else {
                        (128 + libc::WTERMSIG(status)) as u8
                    };
                }
                -1 => return 1,
                _ => {}
            }
            let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
            if sig > 0 && sig != libc::SIGCHLD {
                libc::kill(child, sig);
            }
        }
    }
}

/// In the new namespaces: the jail's root, its contents, limits and identity.
fn build_root(spec: &JailSpec, cfg: &VmConfig) -> Result<(), JailError> {
    let root = &spec.dir;
    let none = std::ptr::null();
    // SAFETY: mount(2) with valid C strings (or NULL where allowed); it reads them only.
    unsafe {
        check(
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "making / private",
        )?;
        let r = cstr(root);
        check(
            libc::mount(
                r.as_ptr(),
                r.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ),
            format!("bind-mounting {} onto itself", root.display()),
        )?;
    }
    for (host, name, ro) in files(cfg) {
        bind_file(&host, &root.join(&name), ro)?;
    }
    let dev = root.join("dev");
    std::fs::create_dir_all(dev.join("net")).map_err(step("creating dev/"))?;
    device_node(&dev.join("kvm"), 10, 232, spec.ids)?;
    if !cfg.nets.is_empty() {
        device_node(&dev.join("net/tun"), 10, 200, spec.ids)?;
    }
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(step("creating proc/"))?;
    let p = cstr(&proc_dir);
    // SAFETY: mount(2) of a new proc instance for the new PID namespace.
    unsafe {
        check(
            libc::mount(
                c"proc".as_ptr(),
                p.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ),
            "mounting proc",
        )?;
    }
    pivot(root)?;
    limits(cfg)?;
    if let Some((uid, gid)) = spec.ids {
        // SAFETY: identity changes with integer arguments; groups cleared first.
        unsafe {
            check(
                libc::setgroups(0, std::ptr::null()),
                "clearing supplementary groups",
            )?;
            check(libc::setresgid(gid, gid, gid), format!("setting gid {gid}"))?;
            check(libc::setresuid(uid, uid, uid), format!("setting uid {uid}"))?;
        }
    }
    Ok(())
}

/// Bind-mounts `host` at `target` (created empty), read-only when asked.
fn bind_file(host: &Path, target: &Path, ro: bool) -> Result<(), JailError> {
    std::fs::File::create(target).map_err(step(format!("creating {}", target.display())))?;
    let (h, t) = (cstr(host), cstr(target));
    let none = std::ptr::null();
    // SAFETY: mount(2) with valid C strings; it reads them only.
    unsafe {
        check(
            libc::mount(
                h.as_ptr(),
                t.as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            ),
            format!("bind-mounting {}", host.display()),
        )?;
        if ro {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            check(
                libc::mount(none, t.as_ptr(), none, flags, std::ptr::null()),
                format!("making {} read-only", host.display()),
            )?;
        }
    }
    Ok(())
}

/// A character device node of the jail's own, owned by the jail's user.
fn device_node(
    path: &Path,
    major: u32,
    minor: u32,
    ids: Option<(u32, u32)>,
) -> Result<(), JailError> {
    let _ = std::fs::remove_file(path);
    let p = cstr(path);
    // SAFETY: mknod/chown on a path inside the jail directory.
    unsafe {
        check(
            libc::mknod(
                p.as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(major, minor),
            ),
            format!("creating {}", path.display()),
        )?;
        if let Some((uid, gid)) = ids {
            check(
                libc::chown(p.as_ptr(), uid, gid),
                format!("chown {}", path.display()),
            )?;
        }
    }
    Ok(())
}

/// Makes `root` the process's `/` and detaches the old root.
fn pivot(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(step("entering the jail directory"))?;
    // SAFETY: pivot_root(".", ".") stacks the old root on the new one; umount2 then
    // detaches it, leaving only the jail.
    unsafe {
        check(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            "pivot_root",
        )?;
        check(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            "detaching the old root",
        )?;
    }
    std::env::set_current_dir("/").map_err(step("entering /"))
}

/// Open files: enough for the VM; file size: the largest disk (writes never grow a
/// disk), at least 1 GiB for serial and timings output. SIGXFSZ is ignored so that a
/// write past the limit fails with EFBIG instead of killing Kiln.
fn limits(cfg: &VmConfig) -> Result<(), JailError> {
    let disk_max = (0..cfg.disks.len())
        .filter_map(|n| std::fs::metadata(format!("/disk{n}")).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    let fsize = disk_max.max(1 << 30);
    for (res, v) in [(libc::RLIMIT_NOFILE, 1024), (libc::RLIMIT_FSIZE, fsize)] {
        let lim = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        // SAFETY: setrlimit reads the struct we pass.
        check(
            unsafe { libc::setrlimit(res, &lim) },
            "setting resource limits",
        )?;
    }
    // SAFETY: ignoring a signal has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    Ok(())
}
