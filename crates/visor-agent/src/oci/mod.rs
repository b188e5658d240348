//! The OCI runtime: pods as runc containers sharing a network namespace on a host bridge.
//!
//! Layout of the state directory (everything needed to re-adopt after an agent restart):
//!
//! ```text
//! STATE/ipam.json, ipam.lock        pod IP allocations (net.rs)
//! STATE/runc/                       runc's --root: its own container state
//! STATE/sandboxes/ID/sandbox.json   sandbox metadata; hosts, hostname, resolv.conf for binds
//! STATE/containers/ID/container.json container metadata (labels, image, log path, cgroup)
//!                     config.json    the OCI bundle's spec; rootfs/ (overlay), upper/, work/
//!                     shim.json      what the shim needs (shim.rs)
//!                     started.json   written by the shim once the container runs
//!                     exit.json      written by the shim once it has exited
//! ```
//!
//! A sandbox is a named network namespace (`/run/netns/visor-ID`) with a veth into the
//! bridge and an address from the pod CIDR; host-network sandboxes have none. A container
//! is a runc bundle whose root is an overlay of the image's layers; it is run by its own
//! detached shim process ([`shim_main`]) so it outlives the agent. Cgroups live at
//! `/CGROUP_PARENT/POD_UID/CONTAINER_ID` in every v1 controller.

mod log;
mod net;
mod shim;
mod spec;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

pub use shim::shim_main;

use crate::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, ExecOutput, ExecStreams, ImageConfig,
    PortStream, ResolvedImage, Runtime, RuntimeError, RuntimeResult, Sandbox, SandboxConfig,
};
use net::{Cidr, Ipam, SandboxNet};
use shim::{EXITED, Exited, SHIM_CONFIG, STARTED, ShimConfig, Started};

/// How the OCI runtime is set up on a host. Two agents on one machine need distinct state
/// directories, bridges and pod CIDRs.
#[derive(Clone, Debug)]
pub struct OciOptions {
    /// Where sandboxes, bundles and runc's state live (e.g. `AGENT_DIR/oci`).
    pub state_dir: PathBuf,
    /// The runc binary; a bare name is looked up on `PATH`.
    pub runc: PathBuf,
    /// The host's pod network, IPv4 `ADDRESS/PREFIX`; the bridge gets its first address.
    pub pod_cidr: String,
    /// The host bridge pods attach to (at most 15 characters).
    pub bridge: String,
    /// The program run as `SHIM_PROGRAM shim ARGS…`, whose `shim` subcommand calls
    /// [`shim_main`] (the `visor` binary itself).
    pub shim_program: PathBuf,
    /// The cgroup directory (in every v1 controller) under which pods' cgroups are made.
    pub cgroup_parent: String,
    /// Largest size of one log file before it is rotated.
    pub log_max_size: u64,
    /// Log files kept per container, the live one included.
    pub log_max_files: u32,
}

impl OciOptions {
    /// Defaults: runc on `PATH`, `10.88.0.0/24` on `visor0`, the running executable as the
    /// shim program, cgroup parent `visor`, 10 MiB × 5 log files.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            runc: PathBuf::from("runc"),
            pod_cidr: "10.88.0.0/24".to_string(),
            bridge: "visor0".to_string(),
            shim_program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("visor")),
            cgroup_parent: "visor".to_string(),
            log_max_size: 10 << 20,
            log_max_files: 5,
        }
    }
}

/// The runc-backed [`Runtime`]. Cheap to share; all state is on disk, so several instances
/// (or a restarted agent) over one state directory see the same sandboxes and containers.
pub struct OciRuntime {
    options: OciOptions,
    cidr: Cidr,
    ipam: Ipam,
    runc_root: PathBuf,
    runc_version: String,
    /// Serialises bridge creation within this process (across processes it is made safe by
    /// re-checking after a failed create).
    bridge_lock: tokio::sync::Mutex<()>,
    /// Whether this process has made sure the bridge is there. Checked once rather than per
    /// sandbox: under the lock, fifty pods starting at once would wait for each other's
    /// checks. Cleared when attaching a sandbox fails, so that a bridge deleted behind the
    /// agent's back is made again for the next sandbox.
    bridge_ready: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SandboxRecord {
    id: String,
    pod_uid: String,
    namespace: String,
    name: String,
    hostname: String,
    host_network: bool,
    ip: Option<Ipv4Addr>,
    netns: Option<PathBuf>,
    created: SystemTime,
    labels: BTreeMap<String, String>,
    stopped: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ImageRecord {
    reference: String,
    id: String,
    layers: Vec<PathBuf>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
}

impl From<&ResolvedImage> for ImageRecord {
    fn from(i: &ResolvedImage) -> Self {
        Self {
            reference: i.reference.clone(),
            id: i.id.clone(),
            layers: i.layers.clone(),
            entrypoint: i.config.entrypoint.clone(),
            cmd: i.config.cmd.clone(),
            env: i.config.env.clone(),
            working_dir: i.config.working_dir.clone(),
            user: i.config.user.clone(),
        }
    }
}

impl From<&ImageRecord> for ResolvedImage {
    fn from(i: &ImageRecord) -> Self {
        Self {
            reference: i.reference.clone(),
            id: i.id.clone(),
            layers: i.layers.clone(),
            config: ImageConfig {
                entrypoint: i.entrypoint.clone(),
                cmd: i.cmd.clone(),
                env: i.env.clone(),
                working_dir: i.working_dir.clone(),
                user: i.user.clone(),
            },
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ContainerRecord {
    id: String,
    sandbox_id: String,
    pod_uid: String,
    name: String,
    attempt: u32,
    image: ImageRecord,
    created_at: SystemTime,
    log_path: PathBuf,
    labels: BTreeMap<String, String>,
    cgroups_path: String,
    tty: bool,
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see a
/// half-written file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A unique name: concurrent writers of one file must not share the temporary.
    let tmp = path.with_extension(format!("tmp-{}", new_id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    write_atomic(path, &bytes)
}

/// `Ok(None)` when the file does not exist.
fn read_json<T: DeserializeOwned>(path: &Path) -> RuntimeResult<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RuntimeError::Failed(format!("{} is corrupt: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn failed(e: anyhow::Error) -> RuntimeError {
    RuntimeError::Failed(format!("{e:#}"))
}

/// A path component that is safe in cgroup and file paths.
fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An ID the runtime made: 32 lower-case hex digits. Anything else cannot name a sandbox or
/// container (and must not reach a path).
fn is_valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl OciRuntime {
    /// Checks the options, creates the state directory and asks runc for its version.
    /// Touches no network: the bridge is made by the first sandbox that needs it.
    pub fn new(options: OciOptions) -> anyhow::Result<Self> {
        let cidr: Cidr = options.pod_cidr.parse()?;
        if options.bridge.is_empty()
            || options.bridge.len() > 15
            || !options
                .bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            anyhow::bail!(
                "bridge name {:?} must be 1 to 15 letters, digits, '-' or '_'",
                options.bridge
            );
        }
        if !is_safe_name(&options.cgroup_parent) {
            anyhow::bail!(
                "cgroup parent {:?} is not a plain name",
                options.cgroup_parent
            );
        }
        for sub in ["sandboxes", "containers", "runc"] {
            let dir = options.state_dir.join(sub);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let out = std::process::Command::new(&options.runc)
            .arg("--version")
            .output()
            .with_context(|| {
                format!("running {} (install Debian's runc)", options.runc.display())
            })?;
        if !out.status.success() {
            anyhow::bail!(
                "{} --version failed: {}",
                options.runc.display(),
                out.status
            );
        }
        let runc_version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("runc version "))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        Ok(Self {
            ipam: Ipam::new(cidr, &options.state_dir),
            runc_root: options.state_dir.join("runc"),
            cidr,
            runc_version,
            options,
            bridge_lock: tokio::sync::Mutex::new(()),
            bridge_ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.options.state_dir.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.options.state_dir.join("containers").join(id)
    }

    fn load_sandbox(&self, id: &str) -> RuntimeResult<Option<SandboxRecord>> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        read_json(&self.sandbox_dir(id).join("sandbox.json"))
    }

    fn load_container(&self, id: &str) -> RuntimeResult<Option<ContainerRecord>> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        read_json(&self.container_dir(id).join("container.json"))
    }

    fn ids_in(&self, sub: &str) -> RuntimeResult<Vec<String>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.options.state_dir.join(sub))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if is_valid_id(&name) {
                ids.push(name);
            }
        }
        Ok(ids)
    }

    fn containers_of(&self, sandbox_id: &str) -> RuntimeResult<Vec<ContainerRecord>> {
        let mut out = Vec::new();
        for id in self.ids_in("containers")? {
            if let Some(rec) = self.load_container(&id)?
                && rec.sandbox_id == sandbox_id
            {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn runc(&self) -> Command {
        let mut cmd = Command::new(&self.options.runc);
        cmd.arg("--root")
            .arg(&self.runc_root)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `runc ARGS` to completion, returning stdout, or the error with runc's stderr.
    async fn runc_output(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .runc()
            .args(args)
            .output()
            .await
            .with_context(|| format!("running {}", self.options.runc.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "runc {} failed ({}): {}",
                args.join(" "),
                out.status,
                shim::runc_error_text(&String::from_utf8_lossy(&out.stderr))
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// runc's view of a container's status (`created`, `running`, `stopped`, …), `None` when
    /// runc does not know it.
    async fn runc_status(&self, id: &str) -> Option<String> {
        let out = self.runc_output(&["state", id]).await.ok()?;
        let state: serde_json::Value = serde_json::from_str(&out).ok()?;
        state["status"].as_str().map(String::from)
    }

    fn sandbox_view(rec: &SandboxRecord) -> Sandbox {
        Sandbox {
            id: rec.id.clone(),
            pod_uid: rec.pod_uid.clone(),
            namespace: rec.namespace.clone(),
            name: rec.name.clone(),
            ip: rec.ip.map(IpAddr::V4),
            netns: rec.netns.clone(),
            created: rec.created,
            ready: !rec.stopped && rec.netns.as_ref().is_none_or(|p| p.exists()),
        }
    }

    fn write_pod_files(&self, rec: &SandboxRecord) -> anyhow::Result<()> {
        let dir = self.sandbox_dir(&rec.id);
        let hosts = match rec.ip {
            Some(ip) => format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\
                 ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
                 fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
                 {ip}\t{}\n",
                rec.hostname
            ),
            None => std::fs::read_to_string("/etc/hosts")
                .unwrap_or_else(|_| "127.0.0.1\tlocalhost\n".to_string()),
        };
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv: String = if rec.host_network {
            host_resolv
        } else {
            // A loopback resolver of the host is unreachable from the pod's namespace.
            host_resolv
                .lines()
                .filter(|l| {
                    let mut words = l.split_whitespace();
                    !(words.next() == Some("nameserver")
                        && words
                            .next()
                            .is_some_and(|a| a.starts_with("127.") || a == "::1"))
                })
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let hostname = if rec.host_network {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string()
        } else {
            rec.hostname.clone()
        };
        std::fs::write(dir.join("hosts"), hosts)?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
        std::fs::write(dir.join("resolv.conf"), resolv)?;
        Ok(())
    }

    async fn setup_network(&self, id: &str) -> anyhow::Result<(Ipv4Addr, PathBuf)> {
        use std::sync::atomic::Ordering;
        if !self.bridge_ready.load(Ordering::Acquire) {
            let _guard = self.bridge_lock.lock().await;
            if !self.bridge_ready.load(Ordering::Acquire) {
                net::ensure_bridge(&self.options.bridge, self.cidr).await?;
                self.bridge_ready.store(true, Ordering::Release);
            }
        }
        let ip = self.ipam.allocate(id)?;
        let net = SandboxNet::for_sandbox(id);
        if let Err(e) = net.create(&self.options.bridge, self.cidr, ip).await {
            self.bridge_ready.store(false, Ordering::Release);
            let _ = self.ipam.release(id);
            return Err(e);
        }
        Ok((ip, net.netns_path()))
    }

    /// Assembles a container's status from its records; see [`Runtime::container_status`].
    async fn status_of(&self, rec: &ContainerRecord) -> RuntimeResult<ContainerStatus> {
        let dir = self.container_dir(&rec.id);
        let started: Option<Started> = read_json(&dir.join(STARTED))?;
        let exited: Option<Exited> = read_json(&dir.join(EXITED))?;
        let state = match (&started, &exited) {
            (_, Some(_)) => ContainerState::Exited,
            (None, None) => ContainerState::Created,
            (Some(s), None) if self.shim_alive(&rec.id, s) => ContainerState::Running,
            // The shim is gone (killed, or the host rebooted): ask runc.
            (Some(_), None) => match self.runc_status(&rec.id).await.as_deref() {
                Some("running") | Some("paused") => ContainerState::Running,
                _ => ContainerState::Unknown,
            },
        };
        let reason = exited.as_ref().map(|e| {
            if e.oom_killed && e.exit_code == 137 {
                "OOMKilled"
            } else if e.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_string()
        });
        Ok(ContainerStatus {
            id: rec.id.clone(),
            sandbox_id: rec.sandbox_id.clone(),
            name: rec.name.clone(),
            attempt: rec.attempt,
            state,
            image: (&rec.image).into(),
            created_at: rec.created_at,
            started_at: started.map(|s| s.started_at),
            finished_at: exited.as_ref().map(|e| e.finished_at),
            exit_code: exited.as_ref().map(|e| e.exit_code),
            reason,
            log_path: rec.log_path.clone(),
            labels: rec.labels.clone(),
        })
    }

    /// Whether the shim that ran `id` still lives (checked against its command line, so a
    /// recycled PID does not count).
    fn shim_alive(&self, id: &str, started: &Started) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", started.shim_pid)).is_ok_and(|cmdline| {
            let dir = self.container_dir(id);
            let needle = dir.as_os_str().as_encoded_bytes();
            cmdline.windows(needle.len()).any(|w| w == needle)
        })
    }

    /// Polls for the shim's exit record until `deadline`; `false` if it did not come (or the
    /// shim died without writing it).
    async fn wait_exited(&self, id: &str, started: &Started, within: Duration) -> bool {
        let exit_file = self.container_dir(id).join(EXITED);
        let deadline = Instant::now() + within;
        loop {
            if exit_file.exists() {
                return true;
            }
            if Instant::now() >= deadline || !self.shim_alive(id, started) {
                return exit_file.exists();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn remove_pod_cgroups(&self, pod_uid: &str) {
        if !is_safe_name(pod_uid) {
            return;
        }
        let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for controller in controllers.flatten() {
            let dir = controller
                .path()
                .join(&self.options.cgroup_parent)
                .join(pod_uid);
            // Fails while other containers of the pod still use it, which is right.
            let _ = std::fs::remove_dir(dir);
        }
    }

    async fn exec_tty(
        &self,
        id: &str,
        argv: &[String],
        streams: ExecStreams,
    ) -> RuntimeResult<i32> {
        use std::os::fd::AsRawFd;
        use tokio::io::unix::AsyncFd;

        let socket_name = format!("visor-exec-{}", new_id());
        let listener = shim::bind_abstract(&socket_name)?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let mut helper = Command::new(&self.options.shim_program);
        helper
            .arg("shim")
            .arg("exec-tty")
            .arg(&self.options.runc)
            .arg(&self.runc_root)
            .arg(id)
            .arg(format!("@{socket_name}"))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = helper.spawn().map_err(|e| {
            RuntimeError::Failed(format!(
                "running the shim {}: {e}",
                self.options.shim_program.display()
            ))
        })?;
        let mut helper_stdout = child.stdout.take().expect("piped");
        let mut helper_stderr = child.stderr.take().expect("piped");
        let stderr_task = tokio::spawn(async move {
            let mut s = String::new();
            let _ = helper_stderr.read_to_string(&mut s).await;
            s
        });
        let accepted = tokio::select! {
            a = listener.accept() => Some(a?.0),
            _ = child.wait() => None,
            _ = tokio::time::sleep(Duration::from_secs(30)) => None,
        };
        let Some(conn) = accepted else {
            let _ = child.kill().await;
            let err = stderr_task.await.unwrap_or_default();
            return Err(RuntimeError::Failed(format!(
                "exec in {id} did not start: {}",
                err.trim()
            )));
        };
        let conn = conn.into_std()?;
        conn.set_nonblocking(false)?;
        let master = tokio::task::spawn_blocking(move || shim::recv_fd(&conn))
            .await
            .map_err(|e| RuntimeError::Failed(e.to_string()))??;
        nix::fcntl::fcntl(
            &master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(std::io::Error::from)?;
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open for its whole life.
        let master = std::sync::Arc::new(
            unsafe { AsyncFd::register(master) }.map_err(std::io::Error::from)?,
        );

        let ExecStreams {
            stdin,
            stdout,
            resize,
            ..
        } = streams;
        let mut tasks = Vec::new();
        if let Some(mut resize) = resize {
            let master = master.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(size) = resize.recv().await {
                    let ws = libc::winsize {
                        ws_row: size.height,
                        ws_col: size.width,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
                    unsafe {
                        libc::ioctl(master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws);
                    }
                }
            }));
        }
        if let Some(mut stdin) = stdin {
            let master = master.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = match stdin.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut data = &buf[..n];
                    while !data.is_empty() {
                        let Ok(mut guard) = master.writable().await else {
                            return;
                        };
                        match guard.try_io(|fd| {
                            nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from)
                        }) {
                            Ok(Ok(w)) => data = &data[w..],
                            Ok(Err(_)) => return,
                            Err(_would_block) => continue,
                        }
                    }
                }
                // End of input: send the terminal's end-of-file character, as a user would.
                let _ = nix::unistd::write(master.get_ref(), b"\x04");
            }));
        }
        let output = {
            let master = master.clone();
            tokio::spawn(async move {
                let mut stdout = stdout;
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let Ok(mut guard) = master.readable().await else {
                        break;
                    };
                    match guard.try_io(|fd| {
                        nix::unistd::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from)
                    }) {
                        // EIO: the last holder of the terminal's other side is gone.
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => {
                            if let Some(out) = stdout.as_mut()
                                && out.write_all(&buf[..n]).await.is_err()
                            {
                                stdout = None;
                            }
                        }
                        Err(_would_block) => continue,
                    }
                }
                if let Some(mut out) = stdout {
                    let _ = out.flush().await;
                    let _ = out.shutdown().await;
                }
            })
        };
        let status = child.wait().await?;
        let mut said = String::new();
        let _ = helper_stdout.read_to_string(&mut said).await;
        let err = stderr_task.await.unwrap_or_default();
        // Background processes may keep the terminal open; do not wait for them for long.
        let _ = tokio::time::timeout(Duration::from_secs(2), output).await;
        for t in tasks {
            t.abort();
        }
        if !said.contains("started") {
            return Err(RuntimeError::Failed(format!(
                "exec in {id} failed: {}",
                err.trim()
            )));
        }
        status
            .code()
            .ok_or_else(|| RuntimeError::Failed(format!("exec helper died: {status}")))
    }

    async fn exec_pipes(
        &self,
        id: &str,
        argv: &[String],
        streams: ExecStreams,
    ) -> RuntimeResult<i32> {
        let mut cmd = self.runc();
        cmd.args(["exec", id])
            .args(argv)
            .stdin(if streams.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if streams.stdout.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(if streams.stderr.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn()?;
        let mut tasks = Vec::new();
        if let (Some(mut from), Some(mut to)) = (streams.stdin, child.stdin.take()) {
            tasks.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }));
        }
        let mut outputs = Vec::new();
        if let (Some(mut to), Some(mut from)) = (streams.stdout, child.stdout.take()) {
            outputs.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }));
        }
        if let (Some(mut to), Some(mut from)) = (streams.stderr, child.stderr.take()) {
            outputs.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }));
        }
        let status = child.wait().await?;
        for o in outputs {
            let _ = tokio::time::timeout(Duration::from_secs(2), o).await;
        }
        for t in tasks {
            t.abort();
        }
        Ok(exit_code_of(status))
    }

    async fn require_running(&self, id: &str) -> RuntimeResult<ContainerRecord> {
        let rec = self
            .load_container(id)?
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        let status = self.status_of(&rec).await?;
        if status.state != ContainerState::Running {
            return Err(RuntimeError::InvalidState(format!(
                "container {id} is not running ({:?})",
                status.state
            )));
        }
        Ok(rec)
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Reads at most `limit` bytes from `from`, discarding the rest (so the writer never blocks).
async fn read_capped(mut from: impl tokio::io::AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Output of an `exec_sync` beyond this is dropped.
const EXEC_OUTPUT_LIMIT: usize = 16 << 20;

#[async_trait]
impl Runtime for OciRuntime {
    fn name(&self) -> &'static str {
        "oci"
    }

    fn version(&self) -> String {
        self.runc_version.clone()
    }

    fn needs_images(&self) -> bool {
        true
    }

    /// Creates the sandbox's directory, pod files and (unless host-networked) its network
    /// namespace with an address. On failure nothing is left behind.
    async fn run_sandbox(&self, config: &SandboxConfig) -> RuntimeResult<Sandbox> {
        if !is_safe_name(&config.pod_uid) {
            return Err(RuntimeError::Failed(format!(
                "pod uid {:?} must be letters, digits, '-', '_' or '.'",
                config.pod_uid
            )));
        }
        let id = new_id();
        let dir = self.sandbox_dir(&id);
        std::fs::create_dir_all(&dir)?;
        let (ip, netns) = if config.host_network {
            (None, None)
        } else {
            match self.setup_network(&id).await {
                Ok((ip, netns)) => (Some(ip), Some(netns)),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(failed(
                        e.context(format!("setting up the network of sandbox {id}")),
                    ));
                }
            }
        };
        let hostname = if config.hostname.is_empty() {
            config.name.clone()
        } else {
            config.hostname.clone()
        };
        let rec = SandboxRecord {
            id: id.clone(),
            pod_uid: config.pod_uid.clone(),
            namespace: config.namespace.clone(),
            name: config.name.clone(),
            hostname,
            host_network: config.host_network,
            ip,
            netns,
            created: SystemTime::now(),
            labels: config.labels.clone(),
            stopped: false,
        };
        let written = self
            .write_pod_files(&rec)
            .and_then(|_| Ok(write_json(&dir.join("sandbox.json"), &rec)?));
        if let Err(e) = written {
            if !rec.host_network {
                let _ = SandboxNet::for_sandbox(&id).destroy().await;
                let _ = self.ipam.release(&id);
            }
            let _ = std::fs::remove_dir_all(&dir);
            return Err(failed(e));
        }
        Ok(Self::sandbox_view(&rec))
    }

    /// Kills every container of the sandbox (no grace), deletes its veth and network
    /// namespace and releases its address. Idempotent, also for unknown IDs.
    async fn stop_sandbox(&self, id: &str) -> RuntimeResult<()> {
        let Some(mut rec) = self.load_sandbox(id)? else {
            return Ok(());
        };
        // All containers at once; a container that cannot be killed does not keep the
        // network up (its error is still reported).
        let containers = self.containers_of(id)?;
        let stops = containers
            .iter()
            .map(|c| self.stop_container(&c.id, Duration::ZERO));
        let stopped = futures::future::join_all(stops).await;
        if !rec.host_network {
            SandboxNet::for_sandbox(id)
                .destroy()
                .await
                .map_err(failed)?;
            self.ipam.release(id).map_err(failed)?;
        }
        if !rec.stopped {
            rec.stopped = true;
            write_json(&self.sandbox_dir(id).join("sandbox.json"), &rec)?;
        }
        stopped.into_iter().collect::<RuntimeResult<Vec<()>>>()?;
        Ok(())
    }

    /// Stops the sandbox if needed, removes its containers (logs stay), the pod's cgroup
    /// directories once empty, and its state. Idempotent.
    async fn remove_sandbox(&self, id: &str) -> RuntimeResult<()> {
        let Some(rec) = self.load_sandbox(id)? else {
            return Ok(());
        };
        self.stop_sandbox(id).await?;
        for c in self.containers_of(id)? {
            self.remove_container(&c.id).await?;
        }
        self.remove_pod_cgroups(&rec.pod_uid);
        match std::fs::remove_dir_all(self.sandbox_dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn list_sandboxes(&self) -> RuntimeResult<Vec<Sandbox>> {
        let mut out = Vec::new();
        for id in self.ids_in("sandboxes")? {
            if let Some(rec) = self.load_sandbox(&id)? {
                out.push(Self::sandbox_view(&rec));
            }
        }
        out.sort_by_key(|s| s.created);
        Ok(out)
    }

    /// Mounts the overlay root (image layers below a fresh upper directory) and writes the
    /// bundle. Nothing runs until [`Runtime::start_container`].
    ///
    /// Caveat: all lower directories travel in one mount option string, limited to a page
    /// (4 KiB); images with very many layers under long paths are refused.
    async fn create_container(
        &self,
        sandbox: &Sandbox,
        config: &ContainerConfig,
    ) -> RuntimeResult<String> {
        let sb = self
            .load_sandbox(&sandbox.id)?
            .ok_or_else(|| RuntimeError::NotFound(format!("sandbox {}", sandbox.id)))?;
        if sb.stopped {
            return Err(RuntimeError::InvalidState(format!(
                "sandbox {} is stopped",
                sb.id
            )));
        }
        if config.image.layers.is_empty() {
            return Err(RuntimeError::InvalidState(format!(
                "image {:?} has no unpacked layers",
                config.image.reference
            )));
        }
        for layer in &config.image.layers {
            let text = layer.to_string_lossy();
            if text.contains([':', ',']) || !layer.is_absolute() {
                return Err(RuntimeError::Failed(format!(
                    "layer path {text:?} must be absolute and free of ':' and ','"
                )));
            }
            if !layer.is_dir() {
                return Err(RuntimeError::NotFound(format!("image layer {text}")));
            }
        }
        let id = new_id();
        let dir = self.container_dir(&id);
        let result = self.create_bundle(&id, &dir, &sb, config);
        if let Err(e) = result {
            let _ = nix::mount::umount2(&dir.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(failed(
                e.context(format!("creating container {:?}", config.name)),
            ));
        }
        Ok(id)
    }

    /// Hands the container to a new shim and returns once runc has started it (or with the
    /// reason it could not).
    async fn start_container(&self, id: &str) -> RuntimeResult<()> {
        let rec = self
            .load_container(id)?
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        let dir = self.container_dir(id);
        if dir.join(STARTED).exists() || dir.join(EXITED).exists() {
            return Err(RuntimeError::InvalidState(format!(
                "container {id} was already started"
            )));
        }
        let shim_config = ShimConfig {
            id: id.to_string(),
            runc: self.options.runc.clone(),
            runc_root: self.runc_root.clone(),
            bundle: dir.clone(),
            log_path: rec.log_path.clone(),
            log_max_size: self.options.log_max_size,
            log_max_files: self.options.log_max_files,
            memory_cgroup: Path::new("/sys/fs/cgroup/memory")
                .join(rec.cgroups_path.trim_start_matches('/')),
            tty: rec.tty,
        };
        write_json(&dir.join(SHIM_CONFIG), &shim_config)?;
        let out = Command::new(&self.options.shim_program)
            .arg("shim")
            .arg("start")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                RuntimeError::Failed(format!(
                    "running the shim {}: {e}",
                    self.options.shim_program.display()
                ))
            })?;
        if !out.status.success() {
            return Err(RuntimeError::Failed(format!(
                "starting container {id} ({}): {}",
                rec.name,
                shim::runc_error_text(&String::from_utf8_lossy(&out.stderr))
            )));
        }
        Ok(())
    }

    /// `runc kill ID TERM`, then after `grace` `runc kill --all ID KILL`; returns once the
    /// shim has recorded the exit. Idempotent: unknown, never started and exited containers
    /// need nothing.
    async fn stop_container(&self, id: &str, grace: Duration) -> RuntimeResult<()> {
        if self.load_container(id)?.is_none() {
            return Ok(());
        }
        let dir = self.container_dir(id);
        let Some(started) = read_json::<Started>(&dir.join(STARTED))? else {
            return Ok(());
        };
        if dir.join(EXITED).exists() {
            return Ok(());
        }
        if !grace.is_zero() {
            // Fails when the process is already gone, which the wait below sees.
            let _ = self.runc_output(&["kill", id, "TERM"]).await;
            if self.wait_exited(id, &started, grace).await {
                return Ok(());
            }
        }
        let _ = self.runc_output(&["kill", "--all", id, "KILL"]).await;
        if self
            .wait_exited(id, &started, Duration::from_secs(10))
            .await
        {
            return Ok(());
        }
        if self.shim_alive(id, &started) {
            return Err(RuntimeError::Failed(format!(
                "container {id} did not exit after SIGKILL"
            )));
        }
        // The shim is gone, so nobody will record the exit: once runc agrees the container
        // is dead, record it as killed and clean runc's state up.
        match self.runc_status(id).await.as_deref() {
            Some("running") | Some("paused") => Err(RuntimeError::Failed(format!(
                "container {id} is still running and its shim is gone"
            ))),
            _ => {
                let _ = self.runc_output(&["delete", "--force", id]).await;
                let exited = Exited {
                    exit_code: 137,
                    finished_at: SystemTime::now(),
                    oom_killed: false,
                };
                write_json(&dir.join(EXITED), &exited)?;
                Ok(())
            }
        }
    }

    /// Kills the container if it still runs, then deletes runc's state, the overlay mount,
    /// the upper directory and the bundle. The log files stay. Idempotent.
    async fn remove_container(&self, id: &str) -> RuntimeResult<()> {
        if !is_valid_id(id) {
            return Ok(());
        }
        let dir = self.container_dir(id);
        if !dir.exists() {
            return Ok(());
        }
        self.stop_container(id, Duration::ZERO).await?;
        if self.runc_root.join(id).exists() {
            let _ = self.runc_output(&["delete", "--force", id]).await;
        }
        let rootfs = dir.join("rootfs");
        match nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(RuntimeError::Failed(format!(
                    "unmounting {}: {e}",
                    rootfs.display()
                )));
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn list_containers(&self) -> RuntimeResult<Vec<ContainerStatus>> {
        let mut out = Vec::new();
        for id in self.ids_in("containers")? {
            if let Some(rec) = self.load_container(&id)? {
                out.push(self.status_of(&rec).await?);
            }
        }
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }

    /// From the records the agent and the shim wrote, so it works for containers a previous
    /// agent started. Reason: `OOMKilled` (exit 137 after an OOM kill in the container's
    /// cgroup), `Completed` (exit 0) or `Error`.
    async fn container_status(&self, id: &str) -> RuntimeResult<ContainerStatus> {
        let rec = self
            .load_container(id)?
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        self.status_of(&rec).await
    }

    /// `runc exec`, output captured (up to 16 MiB per stream). On timeout the process is
    /// killed and the call fails with a message saying so.
    async fn exec_sync(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> RuntimeResult<ExecOutput> {
        if argv.is_empty() {
            return Err(RuntimeError::Failed("exec needs a command".to_string()));
        }
        self.require_running(id).await?;
        let pid_file = self
            .container_dir(id)
            .join(format!("exec-{}.pid", new_id()));
        let mut child = self
            .runc()
            .arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .args(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let run = async {
            let (out, err, status) = tokio::join!(
                read_capped(stdout, EXEC_OUTPUT_LIMIT),
                read_capped(stderr, EXEC_OUTPUT_LIMIT),
                child.wait()
            );
            status.map(|s| (out, err, s))
        };
        let result = tokio::time::timeout(timeout, run).await;
        let outcome = match result {
            Ok(Ok((stdout, stderr, status))) => Ok(ExecOutput {
                exit_code: exit_code_of(status),
                stdout,
                stderr,
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                // runc does not pass SIGKILL on: kill the exec'd process itself.
                if let Some(pid) = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.kill().await;
                Err(RuntimeError::Failed(format!(
                    "command {:?} in container {id} timed out after {timeout:?}",
                    argv[0]
                )))
            }
        };
        let _ = std::fs::remove_file(&pid_file);
        outcome
    }

    /// Without a terminal, `runc exec` with pipes. With one, a shim helper runs `runc exec
    /// --detach --tty --console-socket` and waits for the process; runc sends the pty master
    /// here (SCM_RIGHTS), which is copied both ways and resized on request.
    async fn exec(&self, id: &str, argv: &[String], streams: ExecStreams) -> RuntimeResult<i32> {
        if argv.is_empty() {
            return Err(RuntimeError::Failed("exec needs a command".to_string()));
        }
        self.require_running(id).await?;
        if streams.tty {
            self.exec_tty(id, argv, streams).await
        } else {
            self.exec_pipes(id, argv, streams).await
        }
    }

    /// A TCP connection to the pod's IP (the host routes to it over the bridge), or to
    /// 127.0.0.1 for host-network pods.
    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> RuntimeResult<Box<dyn PortStream>> {
        let rec = self
            .load_sandbox(sandbox_id)?
            .ok_or_else(|| RuntimeError::NotFound(format!("sandbox {sandbox_id}")))?;
        if rec.stopped {
            return Err(RuntimeError::InvalidState(format!(
                "sandbox {sandbox_id} is stopped"
            )));
        }
        let addr = match (rec.host_network, rec.ip) {
            (false, Some(ip)) => IpAddr::V4(ip),
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((addr, port)),
        )
        .await
        .map_err(|_| RuntimeError::Failed(format!("connecting to {addr}:{port} timed out")))??;
        Ok(Box::new(stream))
    }
}

impl OciRuntime {
    fn create_bundle(
        &self,
        id: &str,
        dir: &Path,
        sb: &SandboxRecord,
        config: &ContainerConfig,
    ) -> anyhow::Result<()> {
        let rootfs = dir.join("rootfs");
        let upper = dir.join("upper");
        let work = dir.join("work");
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // overlayfs lists lower directories topmost first; the image gives them lowest first.
        let lower: Vec<String> = config
            .image
            .layers
            .iter()
            .rev()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        if data.len() >= 4096 {
            anyhow::bail!(
                "the image's {} layers do not fit one overlay mount",
                lower.len()
            );
        }
        nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .with_context(|| format!("mounting the overlay root at {}", rootfs.display()))?;

        let cgroups_path = format!("/{}/{}/{}", self.options.cgroup_parent, sb.pod_uid, id);
        let sandbox_dir = self.sandbox_dir(&sb.id);
        let view = spec::SandboxView {
            netns: sb.netns.as_deref(),
            hostname: &sb.hostname,
            hosts_file: &sandbox_dir.join("hosts"),
            hostname_file: &sandbox_dir.join("hostname"),
            resolv_file: &sandbox_dir.join("resolv.conf"),
        };
        let spec = spec::build(config, &view, &cgroups_path)?;
        let json = serde_json::to_vec_pretty(&spec)?;
        write_atomic(&dir.join("config.json"), &json)?;
        let rec = ContainerRecord {
            id: id.to_string(),
            sandbox_id: sb.id.clone(),
            pod_uid: sb.pod_uid.clone(),
            name: config.name.clone(),
            attempt: config.attempt,
            image: (&config.image).into(),
            created_at: SystemTime::now(),
            log_path: config.log_path.clone(),
            labels: config.labels.clone(),
            cgroups_path,
            tty: config.tty,
        };
        write_json(&dir.join("container.json"), &rec)?;
        Ok(())
    }
}
