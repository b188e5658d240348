//! The end-to-end test harness: a real `visor server` process (on SQLite or on a real etcd),
//! driven by the real `kubectl` and, for what kubectl cannot send, by raw HTTPS requests.
//!
//! Every process a test starts is owned by a guard that kills it by PID when dropped, so a
//! failing test leaves nothing running. Servers listen on loopback only.

// Each test file is its own crate and uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use tempfile::TempDir;
use visor::client::ApiClient;

pub mod hosts;
pub mod users;

/// How long a server may take to write its kubeconfig.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one kubectl invocation may take before the test fails instead of hanging.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(90);

/// Which store the server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Etcd,
}

/// Generates one `#[test]` per backend for each listed function `fn NAME(backend: Backend)`,
/// in modules `sqlite` and `etcd`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Sqlite) })*
        }
        mod etcd {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Etcd) })*
        }
    };
}

/// A free TCP port on 127.0.0.1. Another process could take it before it is used; the
/// window is short and a clash shows up as a clear start-up failure.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends SIGKILL to a process we started and reaps it.
fn kill_child(child: &mut Child) {
    // SAFETY: kill(2) with a PID of a child we own and have not reaped yet, so the PID cannot
    // have been reused by another process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
}

/// A single-member etcd on free loopback ports in a temporary directory.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    dir: TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        // A free port can be taken by another test between our probe and etcd's bind: then
        // try other ports.
        for _ in 0..5 {
            match Etcd::try_start() {
                Ok(etcd) => return etcd,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("{log}"),
            }
        }
        panic!("etcd found no free loopback ports in five tries");
    }

    fn try_start() -> Result<Etcd, String> {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("/usr/bin/etcd")
            .args(["--name", "visor-test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("visor-test={peer_url}")])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", free_port()),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting /usr/bin/etcd (run scripts/install-deps)");
        let mut etcd = Etcd {
            child,
            endpoint: format!("127.0.0.1:{client}"),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let health = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &client_url,
                    "--command-timeout=2s",
                    "endpoint",
                    "health",
                ])
                .output()
                .expect("running etcdctl (run scripts/install-deps)");
            if health.status.success() {
                return Ok(etcd);
            }
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(format!("etcd exited with {status}:\n{}", etcd.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd not healthy after {START_TIMEOUT:?}:\n{}",
                    etcd.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// A `visor server` process with its own data directory and port.
pub struct TestServer {
    child: Option<Child>,
    pub backend: Backend,
    pub port: u16,
    dir: TempDir,
    /// kubectl's discovery cache, per server so that two servers reusing a port never share it.
    cache_dir: TempDir,
    starts: u32,
    /// The subcommand and its extra flags: `server`, or `up ...` (server plus local agent).
    role: Vec<String>,
    // Declared last so it is dropped after the server is killed.
    etcd: Option<Etcd>,
}

impl TestServer {
    /// Starts a server on `backend` and waits until it is ready (its kubeconfig exists).
    pub fn start(backend: Backend) -> TestServer {
        Self::start_role(backend, vec!["server".into()])
    }

    /// Starts `visor up` (the server with a local agent, on SQLite) with extra flags, and
    /// waits until the server is ready; the host may join a moment later.
    pub fn up(flags: &[&str]) -> TestServer {
        let mut role = vec!["up".to_string()];
        role.extend(flags.iter().map(|f| f.to_string()));
        Self::start_role(Backend::Sqlite, role)
    }

    fn start_role(backend: Backend, role: Vec<String>) -> TestServer {
        let etcd = (backend == Backend::Etcd).then(Etcd::start);
        let mut server = TestServer {
            child: None,
            backend,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            cache_dir: tempfile::tempdir().unwrap(),
            starts: 0,
            role,
            etcd,
        };
        server.spawn();
        server
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    /// What the server wrote to stderr in its current run.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_path("stderr")).unwrap_or_default()
    }

    /// What the server printed to stdout in its current run.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log_path("stdout")).unwrap_or_default()
    }

    fn log_path(&self, stream: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("server.{}.{stream}", self.starts))
    }

    fn spawn(&mut self) {
        // The server replaces the kubeconfig when ready; removing the old one first makes its
        // appearance mean this run is ready.
        let _ = std::fs::remove_file(self.kubeconfig());
        self.starts += 1;
        let mut command = Command::new(env!("CARGO_BIN_EXE_visor"));
        command
            .args(&self.role)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--listen", &format!("127.0.0.1:{}", self.port)]);
        if let Some(etcd) = &self.etcd {
            command.args(["--datastore", &format!("etcd://{}", etcd.endpoint)]);
        }
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.log_path("stdout")).unwrap())
            .stderr(std::fs::File::create(self.log_path("stderr")).unwrap())
            .spawn()
            .expect("starting visor server");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.kubeconfig().exists() {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                panic!(
                    "visor server exited with {status} before it was ready:\n{}",
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "visor server not ready after {START_TIMEOUT:?}:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with SIGTERM and returns how it exited (it should exit 0 promptly).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server not running");
        // SAFETY: signalling our own unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                kill_child(&mut child);
                panic!("visor server ignored SIGTERM for 15 s:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server cleanly (asserting a clean exit) and starts it again on the same data
    /// and port.
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "visor server exited with {status} on SIGTERM:\n{}",
            self.stderr()
        );
        self.spawn();
    }

    /// Kills the server with SIGKILL (no chance to clean up).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server not running");
        kill_child(&mut child);
    }

    /// Starts the server again after [`Self::kill9`] or [`Self::terminate`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "server still running");
        self.spawn();
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.cache_dir.path())
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        command
    }

    /// Runs `kubectl ARGS` against this server and returns its output (failing the test if it
    /// runs longer than 90 s).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_stdin(args, None)
    }

    /// Runs kubectl with `input` on its stdin (for `-f -`).
    pub fn kubectl_with_stdin(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut command = self.kubectl_command(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        if input.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().expect("running kubectl");
        if let Some(input) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.as_bytes()).unwrap();
        }
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(KUBECTL_TIMEOUT) {
            Ok(output) => output.expect("waiting for kubectl"),
            Err(_) => {
                // SAFETY: the child is unreaped (its waiter thread has not returned).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                panic!(
                    "kubectl {args:?} hung for {KUBECTL_TIMEOUT:?}; server stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// Runs kubectl, asserts it succeeded and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert_success(args, &output, self);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs kubectl with stdin, asserts it succeeded and returns its stdout.
    pub fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        let output = self.kubectl_with_stdin(args, Some(input));
        assert_success(args, &output, self);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs kubectl, asserts it failed and returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            !output.status.success(),
            "kubectl {args:?} succeeded but should have failed; stdout:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Runs kubectl with stdin, asserts it failed and returns its stderr.
    pub fn fails_stdin(&self, args: &[&str], input: &str) -> String {
        let output = self.kubectl_with_stdin(args, Some(input));
        assert!(
            !output.status.success(),
            "kubectl {args:?} succeeded but should have failed; stdout:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let out = self.ok(&args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: not JSON ({e}):\n{out}"))
    }

    /// Starts a long-running kubectl (such as `get -w`) whose stdout lines can be read.
    pub fn kubectl_stream(&self, args: &[&str]) -> KubectlStream {
        let mut child = self
            .kubectl_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("running kubectl");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        KubectlStream { child, lines }
    }

    /// Sends one raw HTTPS request as the admin and returns the status and body. For what
    /// kubectl cannot send: malformed bodies, wrong content types, oversized requests.
    pub fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> (StatusCode, String) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let kubeconfig = self.kubeconfig();
        let body = body.into();
        let size = body.len();
        let what = format!("{method} {path} ({size} bytes, {content_type})");
        runtime.block_on(async move {
            let client = ApiClient::from_kubeconfig(&kubeconfig).await.unwrap();
            let mut conn = client.connect().await.unwrap();
            let request = conn.request(method, path, content_type, body).unwrap();
            let response =
                tokio::time::timeout(Duration::from_secs(30), conn.send_request(request))
                    .await
                    .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
                    .unwrap_or_else(|e| panic!("{what}: no response: {e:#}"));
            (response.status, response.text())
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }
}

fn assert_success(args: &[&str], output: &Output, server: &TestServer) {
    assert!(
        output.status.success(),
        "kubectl {args:?} failed ({}):\nstderr: {}\nstdout: {}\nserver stderr (last 3000 bytes):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout),
        tail(&server.stderr(), 3000),
    );
}

fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A running kubectl whose stdout is read line by line; killed when dropped.
pub struct KubectlStream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl KubectlStream {
    /// Waits up to `timeout` for a line for which `matches` holds, returning every line read
    /// until then (the matching one last). Panics with the lines seen if none matches in time.
    pub fn wait_for(&mut self, timeout: Duration, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = matches(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!(
                    "no matching line within {timeout:?}; kubectl printed:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for KubectlStream {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// Splits a kubectl table into rows of whitespace-separated cells (header first).
pub fn table(output: &str) -> Vec<Vec<String>> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// The cells of the header row of a kubectl table, with multi-word headers kept together
/// (kubectl separates columns by at least two spaces... or one when a value is wide, so this is
/// only used for headers, which are never that wide).
pub fn header(output: &str) -> Vec<String> {
    output
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

/// The metrics a `visor bench BENCH --json` run printed, by name; fails the test if the run
/// failed, printed anything else, or lacks one of `positive` or has it at zero or below.
pub fn bench_metrics(
    out: &Output,
    bench: &str,
    positive: &[&str],
) -> std::collections::BTreeMap<String, f64> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics: std::collections::BTreeMap<String, f64> = stdout
        .lines()
        .map(|line| {
            let metric: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(metric["bench"], bench, "{line}");
            (
                metric["metric"].as_str().unwrap().to_string(),
                metric["value"].as_f64().unwrap(),
            )
        })
        .collect();
    for key in positive {
        let value = metrics
            .get(*key)
            .unwrap_or_else(|| panic!("no {key} in {metrics:?}"));
        assert!(*value > 0.0, "{key} = {value}");
    }
    metrics
}

/// Polls `probe` every 100 ms until it returns `Some`, failing the test after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
