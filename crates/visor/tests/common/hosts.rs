//! Hosts for end-to-end tests: `visor agent` processes, a pod network of their own per test,
//! the busybox test image, and a guard that leaves no container, mount, network namespace or
//! bridge behind even when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::TestServer;

static NETWORKS: AtomicU32 = AtomicU32::new(0);

/// A pod network no other test process uses: a bridge name and a /24 derived from the PID.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    pub bridge: String,
    pub cidr: String,
}

impl PodNetwork {
    pub fn unique() -> PodNetwork {
        let n = NETWORKS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let slot = pid * 4 + n;
        PodNetwork {
            bridge: format!("vt{slot}"),
            cidr: format!("10.{}.{}.0/24", 128 + (slot / 250) % 120, slot % 250),
        }
    }
}

/// Removes every pod an OCI agent left in `agent_dir`, and the bridge.
pub fn clean_up_host(agent_dir: &Path, network: &PodNetwork) {
    let state = agent_dir.join("oci");
    if state.exists() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut options = visor_agent::oci::OciOptions::new(&state);
            options.pod_cidr = network.cidr.clone();
            options.bridge = network.bridge.clone();
            let Ok(oci) = visor_agent::oci::OciRuntime::new(options) else {
                return;
            };
            use visor_agent::runtime::Runtime;
            for container in oci.list_containers().await.unwrap_or_default() {
                let _ = oci.stop_container(&container.id, Duration::ZERO).await;
                let _ = oci.remove_container(&container.id).await;
            }
            for sandbox in oci.list_sandboxes().await.unwrap_or_default() {
                let _ = oci.stop_sandbox(&sandbox.id).await;
                let _ = oci.remove_sandbox(&sandbox.id).await;
            }
        });
    }
    let _ = Command::new("ip")
        .args(["link", "del", &network.bridge])
        .stderr(Stdio::null())
        .status();
    // Memory-backed emptyDirs are tmpfs mounts below the agent's pod directories.
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        let prefix = agent_dir.to_string_lossy().to_string();
        for target in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if target.starts_with(&prefix) {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
    }
}

/// Builds the busybox test image and imports it into an agent's image cache with
/// `visor image import`, as a user would.
pub fn import_test_image(agent_dir: &Path, reference: &str) {
    let work = tempfile::tempdir().unwrap();
    let image = visor_images::testing::build_busybox_image(work.path(), reference).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_visor"))
        .args(["image", "import"])
        .arg(&image.oci_archive)
        .arg("--data-dir")
        .arg(agent_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "visor image import failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `visor agent` process joined to a test server.
pub struct TestAgent {
    child: Option<Child>,
    pub name: String,
    pub dir: TempDir,
    pub network: PodNetwork,
    args: Vec<String>,
    starts: u32,
}

impl TestAgent {
    /// Starts an agent named `name` with `flags` (e.g. `--runtime sim`), joined with the
    /// server's join token.
    pub fn start(server: &TestServer, name: &str, flags: &[&str]) -> TestAgent {
        let token = std::fs::read_to_string(server.data_dir().join("agent-token"))
            .expect("the server writes DATA_DIR/agent-token");
        let network = PodNetwork::unique();
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            format!("https://127.0.0.1:{}", server.port),
            "--token".into(),
            token.trim().into(),
            "--certificate-authority".into(),
            server
                .data_dir()
                .join("pki/ca.crt")
                .to_string_lossy()
                .into(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            dir.path().to_string_lossy().into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--pod-cidr".into(),
            network.cidr.clone(),
            "--bridge".into(),
            network.bridge.clone(),
            "--lease-interval".into(),
            "2".into(),
        ];
        // A test's own network flags replace the generated ones.
        for flag in ["--pod-cidr", "--bridge", "--lease-interval"] {
            if flags.contains(&flag)
                && let Some(i) = args.iter().position(|a| a == flag)
            {
                args.drain(i..i + 2);
            }
        }
        args.extend(flags.iter().map(|f| f.to_string()));
        let mut agent = TestAgent {
            child: None,
            name: name.into(),
            dir,
            network,
            args,
            starts: 0,
        };
        agent.spawn();
        agent
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("agent.{}.log", self.starts))
    }

    /// What the agent wrote to stderr in its current run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let child = Command::new(env!("CARGO_BIN_EXE_visor"))
            .args(&self.args)
            .env("RUST_LOG", "info,visor_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path()).unwrap())
            .spawn()
            .expect("starting visor agent");
        self.child = Some(child);
    }

    /// Kills the agent with SIGKILL; its pods keep running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again on the same data directory (no token needed any more).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "agent still running");
        self.spawn();
    }

    /// Waits until `kubectl get node NAME` reports Ready.
    pub fn wait_ready(&mut self, server: &TestServer, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let output = server.kubectl(&[
                "get",
                "node",
                &self.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            if String::from_utf8_lossy(&output.stdout).trim() == "True" {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("visor agent exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "host {} not Ready after {timeout:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
        clean_up_host(self.dir.path(), &self.network);
    }
}
