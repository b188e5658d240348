//! The per-container shim: the process that owns a running container so that it outlives the
//! agent, like containerd's shim.
//!
//! `SHIM_PROGRAM shim start DIR` (see [`shim_main`]) reads `DIR/shim.json`, detaches
//! (fork, `setsid`, fork again, stdio to `/dev/null`) and, as a child subreaper, runs
//! `runc run --detach`: one runc process per container start rather than `runc create` and
//! `runc start`, since each runc invocation is a Go program start that costs milliseconds of
//! CPU. The first process waits until the container has started (or failed to) and exits 0
//! (or 1 with the reason on stderr), so the agent's `start_container` returns only then. The
//! detached shim copies the container's output into the CRI log, reaps the container's init
//! process, records its exit code, finish time and whether the cgroup saw an OOM kill in
//! `DIR/exit.json`, and finally runs `runc delete`.
//!
//! `SHIM_PROGRAM shim exec-tty …` is the helper for interactive execs with a terminal: it
//! runs `runc exec --detach --tty --console-socket` as a subreaper (runc then hands the pty
//! master to the agent) and waits for the exec'd process, exiting with its exit code.
//!
//! Both run before any async runtime exists; forking is safe because the process has a
//! single thread at that point.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use super::log::{CriLog, Stream, copy_stream};

/// What the shim needs to run one container; written by the agent as `DIR/shim.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimConfig {
    pub id: String,
    pub runc: PathBuf,
    pub runc_root: PathBuf,
    pub bundle: PathBuf,
    pub log_path: PathBuf,
    pub log_max_size: u64,
    pub log_max_files: u32,
    /// The container's memory cgroup directory, read for OOM kills after it exits.
    pub memory_cgroup: PathBuf,
    pub tty: bool,
}

/// Written by the shim once the container runs: `DIR/started.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Started {
    pub shim_pid: i32,
    pub init_pid: i32,
    pub started_at: SystemTime,
}

/// Written by the shim once the container has exited: `DIR/exit.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exited {
    pub exit_code: i32,
    pub finished_at: SystemTime,
    pub oom_killed: bool,
}

pub const SHIM_CONFIG: &str = "shim.json";
pub const STARTED: &str = "started.json";
pub const EXITED: &str = "exit.json";
const INIT_PID: &str = "init.pid";

/// The entry point of `SHIM_PROGRAM shim ARGS…`; `args` are the arguments after `shim`.
/// Returns the process exit code. Must be called before any other thread exists (it forks).
pub fn shim_main(args: Vec<String>) -> i32 {
    match args.first().map(String::as_str) {
        Some("start") if args.len() == 2 => start(Path::new(&args[1])),
        Some("exec-tty") if args.len() >= 7 && args[5] == "--" => exec_tty(&args[1..]),
        _ => {
            eprintln!(
                "usage: shim start CONTAINER_DIR | shim exec-tty RUNC RUNC_ROOT ID SOCKET -- ARGV…"
            );
            2
        }
    }
}

fn start(dir: &Path) -> i32 {
    let config: ShimConfig = match std::fs::read(dir.join(SHIM_CONFIG))
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(serde_json::from_slice(&b)?))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shim: reading {}: {e}", dir.join(SHIM_CONFIG).display());
            return 1;
        }
    };
    let (report_read, report_write) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("shim: pipe: {e}");
            return 1;
        }
    };
    // SAFETY: the process is single-threaded here (see the module documentation).
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            eprintln!("shim: fork: {e}");
            1
        }
        Ok(ForkResult::Parent { child }) => {
            drop(report_write);
            let mut report = String::new();
            let _ = File::from(report_read).read_to_string(&mut report);
            let _ = waitpid(child, None);
            if report.starts_with("ok") {
                0
            } else if report.is_empty() {
                eprintln!("shim exited before the container started");
                1
            } else {
                eprintln!("{}", report.trim_end());
                1
            }
        }
        Ok(ForkResult::Child) => {
            drop(report_read);
            let _ = nix::unistd::setsid();
            // SAFETY: still single-threaded.
            match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Child) => {
                    detach_stdio();
                    let code = supervise(dir, &config, File::from(report_write));
                    std::process::exit(code)
                }
                // The intermediate process exits at once so the shim is re-parented away
                // from the agent and can never reacquire a terminal.
                _ => std::process::exit(0),
            }
        }
    }
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let _ = std::env::set_current_dir("/");
}

fn runc(config_runc: &Path, root: &Path) -> Command {
    let mut cmd = Command::new(config_runc);
    cmd.arg("--root").arg(root);
    cmd
}

/// The detached shim's life: start the container, report, copy logs, reap, record.
fn supervise(dir: &Path, config: &ShimConfig, mut report: File) -> i32 {
    let fail = |report: &mut File, msg: String| {
        let _ = report.write_all(format!("error: {msg}").as_bytes());
        let _ = runc(&config.runc, &config.runc_root)
            .args(["delete", "--force", &config.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        1
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return fail(&mut report, format!("becoming a subreaper: {e}"));
    }
    let log = match CriLog::open(&config.log_path, config.log_max_size, config.log_max_files) {
        Ok(l) => Arc::new(Mutex::new(l)),
        Err(e) => {
            return fail(
                &mut report,
                format!("opening log {}: {e}", config.log_path.display()),
            );
        }
    };
    let pid_file = dir.join(INIT_PID);
    let _ = std::fs::remove_file(&pid_file);
    // Read before the container runs, so that only its own OOM kills count: its cgroup is
    // normally new (no count yet), but runc reuses one left over under the same path.
    let oom_before = oom_kills(&config.memory_cgroup);

    let mut run = runc(&config.runc, &config.runc_root);
    run.arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(&config.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .stdin(Stdio::null());
    let mut copiers = Vec::new();
    let console = if config.tty {
        let name = format!("visor-console-{}-{}", config.id, std::process::id());
        let listener = match bind_abstract(&name) {
            Ok(l) => l,
            Err(e) => return fail(&mut report, format!("console socket: {e}")),
        };
        run.arg("--console-socket").arg(format!("@{name}"));
        run.stdout(Stdio::null()).stderr(Stdio::piped());
        Some(listener)
    } else {
        None
    };
    let (out_read, err_read) = if console.is_none() {
        let (Ok((out_r, out_w)), Ok((err_r, err_w))) = (
            nix::unistd::pipe2(OFlag::O_CLOEXEC),
            nix::unistd::pipe2(OFlag::O_CLOEXEC),
        ) else {
            return fail(&mut report, "creating output pipes".to_string());
        };
        run.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
        (Some(out_r), Some(err_r))
    } else {
        (None, None)
    };
    run.arg(&config.id);
    let mut child = match run.spawn() {
        Ok(c) => c,
        Err(e) => {
            return fail(
                &mut report,
                format!("running {}: {e}", config.runc.display()),
            );
        }
    };
    // Our copies of the pipes' write ends must go, or the copiers would never see the end.
    drop(run);
    let mut master = None;
    if let Some(listener) = console {
        let received = listener
            .set_nonblocking(false)
            .and_then(|_| accept_with_child(&listener, &mut child))
            .and_then(|stream| recv_fd(&stream));
        match received {
            Ok(fd) => master = Some(fd),
            Err(e) => {
                let _ = child.kill();
                let mut stderr = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut stderr);
                }
                let _ = child.wait();
                return fail(
                    &mut report,
                    format!("runc run: {} {}", runc_error_text(&stderr), e),
                );
            }
        }
    }
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return fail(&mut report, format!("waiting for runc run: {e}")),
    };
    if !status.success() {
        let mut text = String::new();
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut text);
        }
        if let Some(err) = &err_read {
            text.push_str(&read_available(err));
        }
        return fail(
            &mut report,
            format!("runc run failed ({status}): {}", runc_error_text(&text)),
        );
    }
    let init_pid: i32 = match std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(p) => p,
        None => return fail(&mut report, "runc run wrote no pid file".to_string()),
    };

    if let Some(master) = master.take() {
        let log = log.clone();
        let file = File::from(master);
        // The master stays open in the copier for the container's whole life: closing it
        // would hang up the container's terminal.
        copiers.push(std::thread::spawn(move || {
            copy_stream(file, Stream::Stdout, log)
        }));
    }
    for (pipe, stream) in [(out_read, Stream::Stdout), (err_read, Stream::Stderr)] {
        if let Some(pipe) = pipe {
            let log = log.clone();
            copiers.push(std::thread::spawn(move || {
                copy_stream(File::from(pipe), stream, log)
            }));
        }
    }

    let record = Started {
        shim_pid: std::process::id() as i32,
        init_pid,
        started_at: SystemTime::now(),
    };
    if let Err(e) = super::write_json(&dir.join(STARTED), &record) {
        let _ = runc(&config.runc, &config.runc_root)
            .args(["kill", &config.id, "KILL"])
            .status();
        return fail(&mut report, format!("recording the start: {e}"));
    }
    let _ = report.write_all(b"ok\n");
    drop(report);

    let exit_code = reap(init_pid);
    let oom_killed = oom_kills(&config.memory_cgroup) > oom_before;
    // Let the copiers drain what the container wrote last, but not forever: a process that
    // escaped the container could hold a pipe open.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in copiers {
            let _ = c.join();
        }
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    let exited = Exited {
        exit_code,
        finished_at: SystemTime::now(),
        oom_killed,
    };
    let _ = super::write_json(&dir.join(EXITED), &exited);
    let _ = runc(&config.runc, &config.runc_root)
        .args(["delete", "--force", &config.id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    0
}

/// runc's error output without logrus decoration: the `msg="…"` values when present
/// (`time=… level=error msg="runc create failed: …"` becomes `runc create failed: …`).
pub(crate) fn runc_error_text(stderr: &str) -> String {
    let mut messages = Vec::new();
    for line in stderr.lines() {
        let Some(start) = line.find("msg=\"") else {
            if !line.trim().is_empty() {
                messages.push(line.trim().to_string());
            }
            continue;
        };
        let mut msg = String::new();
        let mut chars = line[start + 5..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => msg.extend(chars.next()),
                '"' => break,
                c => msg.push(c),
            }
        }
        messages.push(msg);
    }
    messages.dedup();
    messages.join("; ")
}

/// Waits for `pid` (a child, by the subreaper role) to exit and returns its exit code,
/// 128 + signal for a signal death. Other orphans reaped on the way are discarded.
fn reap(pid: i32) -> i32 {
    let target = Pid::from_raw(pid);
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p == target => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == target => return 128 + sig as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => {
                // Not our child after all (it was never re-parented to us): follow it by
                // polling; its exit code is then unknown.
                while nix::sys::signal::kill(target, None).is_ok() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                return 255;
            }
        }
    }
}

/// The cgroup v1 memory controller's count of OOM kills (`oom_kill` in `memory.oom_control`).
fn oom_kills(memory_cgroup: &Path) -> u64 {
    std::fs::read_to_string(memory_cgroup.join("memory.oom_control"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn read_available(fd: &OwnedFd) -> String {
    let mut out = Vec::new();
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut buf = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(fd, &mut buf) {
        if n == 0 || out.len() > 64 * 1024 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Binds a listening Unix socket in the abstract namespace (runc's `--console-socket @NAME`),
/// which needs no file and vanishes with its last descriptor.
pub(crate) fn bind_abstract(name: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    std::os::unix::net::UnixListener::bind_addr(&addr)
}

/// Accepts the console connection, giving up when runc exits without making one.
fn accept_with_child(
    listener: &std::os::unix::net::UnixListener,
    child: &mut std::process::Child,
) -> std::io::Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(std::io::Error::other(format!(
                        "runc exited ({status}) without sending the console"
                    )));
                }
                if std::time::Instant::now() > deadline {
                    return Err(std::io::Error::other("timed out waiting for the console"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Receives one file descriptor sent with `SCM_RIGHTS` (runc's console master).
pub(crate) fn recv_fd(stream: &UnixStream) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            for &extra in &fds[1..] {
                // SAFETY: received descriptors are ours to close.
                drop(unsafe { OwnedFd::from_raw_fd(extra) });
            }
            // SAFETY: the kernel just installed this descriptor for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(std::io::Error::other(
        "no file descriptor in the console message",
    ))
}

/// `exec-tty RUNC RUNC_ROOT ID SOCKET -- ARGV…`: prints `started` once runc has started the
/// process, then exits with the process's exit code.
fn exec_tty(args: &[String]) -> i32 {
    let (runc_path, root, id, socket) = (&args[0], &args[1], &args[2], &args[3]);
    let argv = &args[5..];
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("becoming a subreaper: {e}");
        return 125;
    }
    let pid_file = std::env::temp_dir().join(format!("visor-exec-{}.pid", std::process::id()));
    let out = runc(Path::new(runc_path), Path::new(root))
        .args([
            "exec",
            "--detach",
            "--tty",
            "--console-socket",
            socket,
            "--pid-file",
        ])
        .arg(&pid_file)
        .arg(id)
        .args(argv)
        .stdin(Stdio::null())
        .output();
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let _ = std::fs::remove_file(&pid_file);
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "runc exec failed ({}): {}",
                out.status,
                runc_error_text(&String::from_utf8_lossy(&out.stderr))
            );
            return 125;
        }
        Err(e) => {
            eprintln!("running {runc_path}: {e}");
            return 125;
        }
    }
    let Some(pid) = pid else {
        eprintln!("runc exec wrote no pid file");
        return 125;
    };
    println!("started");
    let _ = std::io::stdout().flush();
    reap(pid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn runc_error_text_strips_logrus_fields() {
        let raw = "time=\"2026-11-21T09:54:44Z\" level=error msg=\"exec failed: exec: \\\"x\\\": not found\"\n";
        assert_eq!(
            super::runc_error_text(raw),
            "exec failed: exec: \"x\": not found"
        );
        assert_eq!(super::runc_error_text("plain error\n"), "plain error");
    }
}
