//! The interface between the agent's pod workers and whatever actually runs a pod.
//!
//! Shaped like the CRI: a pod is a *sandbox* (its network, and for VM-backed runtimes its
//! lightweight VM) holding *containers*. The pod workers decide what should run (restart
//! policy, back-off, probes, init order) and ask a [`Runtime`] to do it; the runtime knows
//! nothing of Kubernetes objects. Implementations: `oci` (runc, [`crate::oci`]) and `sim`
//! (simulated hosts, [`crate::sim`]); a microVM runtime (QEMU with an in-guest agent) plugs in
//! behind the same trait, the guest agent answering the container calls.
//!
//! Guarantees every implementation gives:
//! - state survives the agent: [`Runtime::list_sandboxes`] and [`Runtime::list_containers`]
//!   report what a previous agent process started, so a restarted agent re-adopts it;
//! - a container's stdout and stderr go to [`ContainerConfig::log_path`] in the CRI log format
//!   (`RFC3339NANO STREAM P|F TEXT`), rotated by size into `PATH.1`, `PATH.2`, …;
//! - calls are idempotent where the name says so (stop, remove of something already gone
//!   succeed).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// What a runtime needs to set up a pod's sandbox.
#[derive(Clone, Debug, Default)]
pub struct SandboxConfig {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    /// Share the host's network namespace instead of getting a pod IP.
    pub host_network: bool,
    /// Contents of the pod's `/etc/hosts`-style metadata the runtime records for re-adoption.
    pub labels: BTreeMap<String, String>,
}

/// A running sandbox.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub id: String,
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    /// The pod's IP on the host's pod network; `None` with host networking.
    pub ip: Option<IpAddr>,
    /// The network namespace containers join, for runtimes that use one.
    pub netns: Option<PathBuf>,
    pub created: SystemTime,
    pub ready: bool,
}

/// An image as the image store resolved it for a container.
#[derive(Clone, Debug, Default)]
pub struct ResolvedImage {
    /// As the pod spec names it.
    pub reference: String,
    /// `sha256:…` of the image's config, the image ID status reports.
    pub id: String,
    /// The image's unpacked layer directories, lowest first (overlayfs lowerdirs).
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
}

/// The parts of an OCI image config that decide how a container starts.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// A bind mount into a container.
#[derive(Clone, Debug)]
pub struct Mount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub read_only: bool,
}

/// Resource limits, already converted from Kubernetes quantities.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    /// cgroup `cpu.shares` from the CPU request (upstream's formula: millicores × 1024 / 1000,
    /// at least 2).
    pub cpu_shares: Option<u64>,
    /// CFS quota per 100 ms period from the CPU limit.
    pub cpu_quota_us: Option<i64>,
    pub memory_limit_bytes: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// Everything needed to create one container in a sandbox.
#[derive(Clone, Debug, Default)]
pub struct ContainerConfig {
    pub name: String,
    /// How many times this container has been restarted before (0 for the first run).
    pub attempt: u32,
    pub image: ResolvedImage,
    /// The full argv, already resolved against the image's entrypoint and cmd.
    pub argv: Vec<String>,
    /// `NAME=value`, in order, already resolved (`valueFrom`, `envFrom`, `$(VAR)` expansion).
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    pub tty: bool,
    pub stdin: bool,
    /// Where stdout and stderr go (see the module's guarantees).
    pub log_path: PathBuf,
    /// Numeric user and group, when the pod or the image asks for one.
    pub user: Option<(u32, u32)>,
    /// Labels recorded with the container for re-adoption (pod uid, container name, …).
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// A container as the runtime sees it.
#[derive(Clone, Debug)]
pub struct ContainerStatus {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    pub state: ContainerState,
    pub image: ResolvedImage,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub exit_code: Option<i32>,
    /// Why it exited: `OOMKilled`, `Error`, `Completed`.
    pub reason: Option<String>,
    pub log_path: PathBuf,
    pub labels: BTreeMap<String, String>,
}

/// The output of a command run to completion in a container (exec probes).
#[derive(Clone, Debug, Default)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A terminal size change for an interactive exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// The streams of an interactive command. With a terminal, stderr is merged into stdout.
pub struct ExecStreams {
    pub stdin: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub stdout: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub stderr: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub tty: bool,
    pub resize: Option<tokio::sync::mpsc::Receiver<TerminalSize>>,
}

pub type RuntimeResult<T> = Result<T, RuntimeError>;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0} not found")]
    NotFound(String),
    /// The container or sandbox is not in a state the call needs (e.g. exec in a stopped one).
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What runs pods on a host. See the module documentation for the guarantees.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `oci`, `sim`, …; shown in the Node's `status.nodeInfo.containerRuntimeVersion`.
    fn name(&self) -> &'static str;
    /// A version string for the Node's status.
    fn version(&self) -> String;
    /// Whether containers need their images pulled and unpacked first.
    fn needs_images(&self) -> bool;
    /// Whether this is a simulated host, whose pods run nothing: probes are not sent and
    /// volumes are not prepared.
    fn simulated(&self) -> bool {
        false
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> RuntimeResult<Sandbox>;
    /// Stops every container in the sandbox (SIGKILL) and tears down its network.
    async fn stop_sandbox(&self, id: &str) -> RuntimeResult<()>;
    /// Removes a stopped sandbox and everything it holds on disk. Idempotent.
    async fn remove_sandbox(&self, id: &str) -> RuntimeResult<()>;
    async fn list_sandboxes(&self) -> RuntimeResult<Vec<Sandbox>>;

    /// Creates (does not start) a container; returns its ID.
    async fn create_container(
        &self,
        sandbox: &Sandbox,
        config: &ContainerConfig,
    ) -> RuntimeResult<String>;
    async fn start_container(&self, id: &str) -> RuntimeResult<()>;
    /// SIGTERM, then SIGKILL after `grace` if it has not exited. Idempotent.
    async fn stop_container(&self, id: &str, grace: Duration) -> RuntimeResult<()>;
    /// Removes an exited container (its log files stay). Idempotent.
    async fn remove_container(&self, id: &str) -> RuntimeResult<()>;
    async fn list_containers(&self) -> RuntimeResult<Vec<ContainerStatus>>;
    async fn container_status(&self, id: &str) -> RuntimeResult<ContainerStatus>;

    /// Runs a command in a running container to completion, killed after `timeout`.
    async fn exec_sync(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> RuntimeResult<ExecOutput>;
    /// Runs a command with streams attached; returns its exit code.
    async fn exec(&self, id: &str, argv: &[String], streams: ExecStreams) -> RuntimeResult<i32>;
    /// A connection to `port` inside the sandbox's network (port-forward).
    async fn port_forward(&self, sandbox_id: &str, port: u16)
    -> RuntimeResult<Box<dyn PortStream>>;
}

/// A byte stream into a pod's network.
pub trait PortStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PortStream for T {}
