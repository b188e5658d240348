//! The OCI runtime against real runc, overlayfs, network namespaces and cgroups.
//!
//! This test target has its own `main` (`harness = false`) so that the test executable can
//! double as the runtime's shim program: invoked as `oci shim ARGS…` (by the runtime under
//! test) it runs [`shim_main`]; otherwise it runs the tests through `libtest-mimic`, which
//! speaks libtest's command line, so `cargo test` and `cargo nextest` both drive it.
//!
//! Each test takes a numbered slot (an exclusive lock file) that gives it its own bridge,
//! pod CIDR and cgroup parent, so tests in parallel processes never meet. A guard removes
//! everything the test made, also when it panics; each test ends by removing its pods and
//! asserting that no process, mount, cgroup, network namespace or veth of it remains.
//!
//! Needs root, runc and `/usr/bin/busybox` (Debian's busybox-static).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use visor_agent::oci::{OciOptions, OciRuntime, shim_main};
use visor_agent::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, ExecStreams, ResolvedImage, Resources,
    Runtime, Sandbox, SandboxConfig, TerminalSize,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("shim") {
        std::process::exit(shim_main(args[2..].to_vec()));
    }
    let args = Arguments::from_args();
    let tests = vec![
        trial("logs_exit_codes_and_reasons", logs_exit_codes_and_reasons),
        trial("oom_killed", oom_killed),
        trial("pids_limit", pids_limit),
        trial("pod_network", pod_network),
        trial("host_network", host_network),
        trial("stop_with_grace", stop_with_grace),
        trial("exec_sync_and_timeout", exec_sync_and_timeout),
        trial("exec_with_tty", exec_with_tty),
        trial("readoption_after_restart", readoption_after_restart),
    ];
    libtest_mimic::run(&args, tests).exit();
}

fn trial(name: &'static str, f: fn(&Env) -> anyhow::Result<()>) -> Trial {
    Trial::test(name, move || {
        if !prerequisites_met() {
            return Err(Failed::from(
                "needs root, runc on PATH and /usr/bin/busybox (busybox-static)",
            ));
        }
        let env = Env::new().map_err(|e| Failed::from(format!("setting up: {e:#}")))?;
        let result = f(&env);
        let cleanup = env.teardown();
        result.map_err(|e| Failed::from(format!("{e:#}")))?;
        cleanup.map_err(|e| Failed::from(format!("cleanup: {e:#}")))
    })
}

fn prerequisites_met() -> bool {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() }) == 0
        && Path::new("/usr/bin/busybox").exists()
        && std::process::Command::new("runc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// One test's world: its slot, state directory, busybox layer and runtime.
struct Env {
    rt: tokio::runtime::Runtime,
    runtime: OciRuntime,
    options: OciOptions,
    dir: tempfile::TempDir,
    layer: PathBuf,
    bridge: String,
    cgroup_parent: String,
    _slot: File,
    torn_down: std::cell::Cell<bool>,
    /// Names of the network namespaces of every sandbox made, checked for at the end.
    netns_seen: std::cell::RefCell<Vec<String>>,
}

impl Env {
    fn new() -> anyhow::Result<Self> {
        let (slot, n) = take_slot()?;
        let dir = tempfile::Builder::new().prefix("visor-oci-").tempdir()?;
        let layer = dir.path().join("layer");
        make_busybox_layer(&layer)?;
        let bridge = format!("vzt{n}");
        let cgroup_parent = format!("visor-test-{n}");
        let mut options = OciOptions::new(dir.path().join("oci"));
        options.pod_cidr = format!("10.213.{n}.0/24");
        options.bridge = bridge.clone();
        options.cgroup_parent = cgroup_parent.clone();
        options.shim_program = std::env::current_exe()?;
        options.log_max_size = 64 * 1024;
        options.log_max_files = 3;
        let env = Env {
            rt: tokio::runtime::Runtime::new()?,
            runtime: OciRuntime::new(options.clone())?,
            options,
            dir,
            layer,
            bridge,
            cgroup_parent,
            _slot: slot,
            torn_down: std::cell::Cell::new(false),
            netns_seen: Default::default(),
        };
        Ok(env)
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn sandbox(&self, name: &str) -> anyhow::Result<Sandbox> {
        let config = SandboxConfig {
            pod_uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "default".into(),
            name: name.into(),
            hostname: name.into(),
            host_network: false,
            labels: BTreeMap::new(),
        };
        let sandbox = self.block(self.runtime.run_sandbox(&config))?;
        self.record_netns(&sandbox);
        Ok(sandbox)
    }

    fn record_netns(&self, sandbox: &Sandbox) {
        if let Some(name) = sandbox.netns.as_ref().and_then(|p| p.file_name()) {
            self.netns_seen
                .borrow_mut()
                .push(name.to_string_lossy().into_owned());
        }
    }

    fn container(&self, name: &str, argv: &[&str]) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            image: ResolvedImage {
                reference: "busybox:test".into(),
                id: "sha256:test".into(),
                layers: vec![self.layer.clone()],
                ..Default::default()
            },
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec!["GREETING=hello".into()],
            log_path: self.dir.path().join("logs").join(format!("{name}.log")),
            labels: BTreeMap::from([("container".to_string(), name.to_string())]),
            ..Default::default()
        }
    }

    /// Creates and starts a container.
    fn run(&self, sandbox: &Sandbox, config: &ContainerConfig) -> anyhow::Result<String> {
        let id = self.block(self.runtime.create_container(sandbox, config))?;
        self.block(self.runtime.start_container(&id))?;
        Ok(id)
    }

    fn wait_exited(&self, id: &str, within: Duration) -> anyhow::Result<ContainerStatus> {
        let deadline = Instant::now() + within;
        loop {
            let status = self.block(self.runtime.container_status(id))?;
            if status.state == ContainerState::Exited {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "container {id} still {:?} after {within:?}",
                status.state
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exec(&self, id: &str, argv: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let out = self.block(self.runtime.exec_sync(id, &argv, Duration::from_secs(20)))?;
        Ok((
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Removes every pod through the runtime and checks that nothing of this test remains.
    fn remove_all_and_check(&self) -> anyhow::Result<()> {
        for sandbox in self.block(self.runtime.list_sandboxes())? {
            self.block(self.runtime.remove_sandbox(&sandbox.id))?;
        }
        anyhow::ensure!(self.block(self.runtime.list_sandboxes())?.is_empty());
        anyhow::ensure!(self.block(self.runtime.list_containers())?.is_empty());
        let state = self.options.state_dir.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        anyhow::ensure!(
            !mounts.lines().any(|l| l.contains(&state)),
            "a mount under {state} remains"
        );
        for controller in [
            "memory", "pids", "cpu", "cpuacct", "freezer", "devices", "blkio",
        ] {
            let parent = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&self.cgroup_parent);
            if parent.exists() {
                let children: Vec<_> = std::fs::read_dir(&parent)?
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name())
                    .collect();
                anyhow::ensure!(
                    children.is_empty(),
                    "cgroups remain in {}: {children:?}",
                    parent.display()
                );
            }
        }
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                anyhow::ensure!(
                    !self.netns_seen.borrow().contains(&name),
                    "network namespace {name} remains"
                );
            }
        }
        let veths = std::process::Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()?;
        anyhow::ensure!(
            String::from_utf8_lossy(&veths.stdout).trim().is_empty(),
            "interfaces remain on {}: {}",
            self.bridge,
            String::from_utf8_lossy(&veths.stdout)
        );
        let runc_list = std::process::Command::new("runc")
            .arg("--root")
            .arg(self.options.state_dir.join("runc"))
            .args(["list", "-q"])
            .output()?;
        anyhow::ensure!(
            String::from_utf8_lossy(&runc_list.stdout).trim().is_empty(),
            "runc still lists {}",
            String::from_utf8_lossy(&runc_list.stdout)
        );
        let processes = processes_mentioning(&state);
        anyhow::ensure!(processes.is_empty(), "processes remain: {processes:?}");
        let ipam =
            std::fs::read_to_string(self.options.state_dir.join("ipam.json")).unwrap_or_default();
        anyhow::ensure!(
            !ipam.contains("10.213."),
            "addresses still allocated: {ipam}"
        );
        Ok(())
    }

    /// Best-effort removal of everything, for the end of a test and for panics.
    fn teardown(&self) -> anyhow::Result<()> {
        if self.torn_down.replace(true) {
            return Ok(());
        }
        let mut first_error = None;
        if let Ok(sandboxes) = self.block(self.runtime.list_sandboxes()) {
            for s in sandboxes {
                if let Err(e) = self.block(self.runtime.remove_sandbox(&s.id)) {
                    first_error.get_or_insert(anyhow::anyhow!("removing sandbox {}: {e}", s.id));
                }
            }
        }
        if let Ok(containers) = self.block(self.runtime.list_containers()) {
            for c in containers {
                let _ = self.block(self.runtime.remove_container(&c.id));
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", "dev", &self.bridge])
            .output();
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let parent = c.path().join(&self.cgroup_parent);
                if let Ok(children) = std::fs::read_dir(&parent) {
                    for child in children.flatten().filter(|e| e.path().is_dir()) {
                        let _ = std::fs::remove_dir(child.path());
                    }
                }
                let _ = std::fs::remove_dir(&parent);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// Takes the first free numbered slot (1–200) by locking its file for the process's life.
fn take_slot() -> anyhow::Result<(File, u32)> {
    let dir = Path::new("/tmp/visor-oci-test-slots");
    std::fs::create_dir_all(dir)?;
    for n in 1..=200 {
        let file = File::create(dir.join(format!("{n}.lock")))?;
        if file.try_lock().is_ok() {
            return Ok((file, n));
        }
    }
    anyhow::bail!("no free test slot")
}

/// A root filesystem layer: `bin/busybox` with a symlink per applet, and `/tmp`.
fn make_busybox_layer(layer: &Path) -> anyhow::Result<()> {
    let bin = layer.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(layer.join("tmp"))?;
    std::fs::copy("/usr/bin/busybox", bin.join("busybox"))?;
    let list = std::process::Command::new("/usr/bin/busybox")
        .arg("--list")
        .output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
    }
    Ok(())
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(format!("{name}: {text}"));
            }
        }
    }
    found
}

/// The log's records as (stream, tag, text), checking each timestamp's shape.
fn log_records(path: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let ts = parts.next().unwrap_or_default();
            anyhow::ensure!(
                ts.len() == 30 && ts.parse::<jiff::Timestamp>().is_ok(),
                "bad timestamp in {line:?}"
            );
            Ok((
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn logs_exit_codes_and_reasons(env: &Env) -> anyhow::Result<()> {
    let sandbox = env.sandbox("logs")?;
    let ok = env.container(
        "ok",
        &[
            "sh",
            "-c",
            "echo $GREETING world; echo oops >&2; head -c 20000 /dev/zero | tr '\\0' a; echo; \
             hostname",
        ],
    );
    let id = env.run(&sandbox, &ok)?;
    let status = env.wait_exited(&id, Duration::from_secs(20))?;
    anyhow::ensure!(
        status.exit_code == Some(0),
        "exit code {:?}",
        status.exit_code
    );
    anyhow::ensure!(
        status.reason.as_deref() == Some("Completed"),
        "{:?}",
        status.reason
    );
    anyhow::ensure!(status.started_at.is_some() && status.finished_at.is_some());
    anyhow::ensure!(status.labels.get("container").map(String::as_str) == Some("ok"));
    let records = log_records(&ok.log_path)?;
    let want_start = [
        ("stdout", "F", "hello world".to_string()),
        ("stderr", "F", "oops".to_string()),
    ];
    // stdout and stderr are separate pipes: their relative order is not guaranteed.
    for want in &want_start {
        anyhow::ensure!(
            records
                .iter()
                .any(|r| (r.0.as_str(), r.1.as_str(), &r.2) == (want.0, want.1, &want.2)),
            "{want:?} missing from {records:?}"
        );
    }
    let long: Vec<_> = records.iter().filter(|r| r.2.starts_with("aaa")).collect();
    anyhow::ensure!(
        long.len() == 2,
        "the long line should be two records: {long:?}"
    );
    anyhow::ensure!(long[0].1 == "P" && long[0].2.len() == 16 * 1024);
    anyhow::ensure!(long[1].1 == "F" && long[1].2.len() == 20000 - 16 * 1024);
    anyhow::ensure!(
        records
            .iter()
            .rfind(|r| r.0 == "stdout")
            .is_some_and(|r| r.2 == "logs"),
        "hostname should be the last stdout record: {:?}",
        records
            .iter()
            .map(|r| (&r.0, &r.1, r.2.len()))
            .collect::<Vec<_>>()
    );

    // Rotation: about 900 KiB of records through 64 KiB files, three kept.
    let chatty = env.container("chatty", &["seq", "1", "20000"]);
    let id = env.run(&sandbox, &chatty)?;
    env.wait_exited(&id, Duration::from_secs(20))?;
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", chatty.log_path.display()));
    anyhow::ensure!(rotated(1).exists() && rotated(2).exists() && !rotated(3).exists());
    for path in [chatty.log_path.clone(), rotated(1), rotated(2)] {
        anyhow::ensure!(std::fs::metadata(&path)?.len() <= 64 * 1024);
    }
    let live = log_records(&chatty.log_path)?;
    anyhow::ensure!(
        live.last().is_some_and(|r| r.2 == "20000"),
        "{:?}",
        live.last()
    );
    let older = log_records(&rotated(1))?;
    let (last_older, first_live): (u32, u32) =
        (older.last().unwrap().2.parse()?, live[0].2.parse()?);
    anyhow::ensure!(last_older + 1 == first_live, "records lost in rotation");

    // With a terminal, the output arrives through the pty as stdout.
    let mut tty = env.container("tty", &["sh", "-c", "tty; echo from-tty >&2"]);
    tty.tty = true;
    let id = env.run(&sandbox, &tty)?;
    let status = env.wait_exited(&id, Duration::from_secs(20))?;
    anyhow::ensure!(status.exit_code == Some(0));
    let records = log_records(&tty.log_path)?;
    anyhow::ensure!(
        records
            .iter()
            .any(|r| r.0 == "stdout" && r.2.starts_with("/dev/pts/"))
            && records
                .iter()
                .any(|r| r.0 == "stdout" && r.2.trim_end() == "from-tty"),
        "{records:?}"
    );

    let failing = env.container("fails", &["sh", "-c", "exit 3"]);
    let id = env.run(&sandbox, &failing)?;
    let status = env.wait_exited(&id, Duration::from_secs(20))?;
    anyhow::ensure!(status.exit_code == Some(3) && status.reason.as_deref() == Some("Error"));

    let missing = env.container("missing", &["/no/such/program"]);
    let id = env.block(env.runtime.create_container(&sandbox, &missing))?;
    let err = env
        .block(env.runtime.start_container(&id))
        .expect_err("must fail");
    anyhow::ensure!(
        err.to_string().contains("no such file"),
        "unhelpful error: {err}"
    );
    env.remove_all_and_check()
}

fn oom_killed(env: &Env) -> anyhow::Result<()> {
    let sandbox = env.sandbox("oom")?;
    let mut hog = env.container("hog", &["sh", "-c", "x=a; while true; do x=$x$x; done"]);
    hog.resources = Resources {
        memory_limit_bytes: Some(16 << 20),
        ..Default::default()
    };
    let id = env.run(&sandbox, &hog)?;
    let status = env.wait_exited(&id, Duration::from_secs(30))?;
    anyhow::ensure!(
        status.exit_code == Some(137),
        "exit code {:?}",
        status.exit_code
    );
    anyhow::ensure!(
        status.reason.as_deref() == Some("OOMKilled"),
        "{:?}",
        status.reason
    );
    env.remove_all_and_check()
}

fn pids_limit(env: &Env) -> anyhow::Result<()> {
    let sandbox = env.sandbox("pids")?;
    let mut c = env.container("limited", &["sleep", "1000"]);
    c.resources = Resources {
        pids_limit: Some(16),
        cpu_shares: Some(512),
        cpu_quota_us: Some(50_000),
        memory_limit_bytes: Some(64 << 20),
    };
    let id = env.run(&sandbox, &c)?;
    let cgroup = |controller: &str, file: &str| {
        let path = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&env.cgroup_parent)
            .join(format!("uid-pids-{}", std::process::id()))
            .join(&id)
            .join(file);
        std::fs::read_to_string(&path).map(|s| s.trim().to_string())
    };
    anyhow::ensure!(cgroup("pids", "pids.max")? == "16");
    anyhow::ensure!(cgroup("cpu", "cpu.shares")? == "512");
    anyhow::ensure!(cgroup("cpu", "cpu.cfs_quota_us")? == "50000");
    anyhow::ensure!(cgroup("memory", "memory.limit_in_bytes")? == (64u64 << 20).to_string());
    // The limit leaves room for `runc exec`, whose Go runtime needs threads while it joins
    // the cgroup; then sleep (1) + sh (1) + at most 14 children fit and the rest cannot fork.
    let (code, _, stderr) = env.exec(
        &id,
        &["sh", "-c", "for i in $(seq 1 40); do sleep 1 & done; wait"],
    )?;
    anyhow::ensure!(
        code != 0 && stderr.contains("fork"),
        "forks beyond the limit should fail: {code} {stderr}"
    );
    env.block(env.runtime.stop_container(&id, Duration::ZERO))?;
    env.remove_all_and_check()
}

fn http_get(env: &Env, ip: IpAddr, port: u16) -> anyhow::Result<String> {
    env.block(async {
        let mut stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((ip, port)),
        )
        .await??;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
            .await?;
        let mut body = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body)).await??;
        Ok(body)
    })
}

fn retry<T>(within: Duration, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn pod_network(env: &Env) -> anyhow::Result<()> {
    let a = env.sandbox("pod-a")?;
    let b = env.sandbox("pod-b")?;
    let (Some(ip_a), Some(ip_b)) = (a.ip, b.ip) else {
        anyhow::bail!("sandboxes got no IP");
    };
    anyhow::ensure!(ip_a != ip_b);
    anyhow::ensure!(a.netns.as_ref().is_some_and(|p| p.exists()) && a.ready);
    let server = env.container(
        "server",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo served-by-pod-a > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    env.run(&a, &server)?;
    let sidecar = env.run(&a, &env.container("sidecar", &["sleep", "1000"]))?;
    let other = env.run(&b, &env.container("other", &["sleep", "1000"]))?;

    // The host reaches the pod's IP.
    let body = retry(Duration::from_secs(10), || http_get(env, ip_a, 8080))?;
    anyhow::ensure!(body.contains("served-by-pod-a"), "{body}");
    // A container of the same pod reaches it on loopback: they share the network.
    let (code, out, err) = env.exec(
        &sidecar,
        &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
    )?;
    anyhow::ensure!(
        code == 0 && out.contains("served-by-pod-a"),
        "{code} {out} {err}"
    );
    // Another pod reaches it on the pod IP.
    let url = format!("http://{ip_a}:8080/");
    let (code, out, err) = env.exec(&other, &["wget", "-q", "-O", "-", &url])?;
    anyhow::ensure!(
        code == 0 && out.contains("served-by-pod-a"),
        "{code} {out} {err}"
    );
    // Both pods see their own address on eth0 and the pod's files.
    let (_, out, _) = env.exec(&other, &["ip", "-4", "addr", "show", "eth0"])?;
    anyhow::ensure!(out.contains(&format!("{ip_b}/24")), "{out}");
    let (_, hosts, _) = env.exec(&other, &["cat", "/etc/hosts"])?;
    anyhow::ensure!(hosts.contains(&format!("{ip_b}\tpod-b")), "{hosts}");
    // Port-forward goes through the same path.
    let mut stream = env.block(env.runtime.port_forward(&a.id, 8080))?;
    let body = env.block(async {
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    })?;
    anyhow::ensure!(body.contains("served-by-pod-a"), "{body}");
    env.remove_all_and_check()
}

fn host_network(env: &Env) -> anyhow::Result<()> {
    let config = SandboxConfig {
        pod_uid: format!("uid-hostnet-{}", std::process::id()),
        namespace: "default".into(),
        name: "hostnet".into(),
        hostname: "hostnet".into(),
        host_network: true,
        labels: BTreeMap::new(),
    };
    let sandbox = env.block(env.runtime.run_sandbox(&config))?;
    anyhow::ensure!(sandbox.ip.is_none() && sandbox.netns.is_none() && sandbox.ready);
    let names = || -> anyhow::Result<Vec<String>> {
        let text = std::fs::read_to_string("/proc/self/net/dev")?;
        Ok(text
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_string())
            .collect())
    };
    let before = names()?;
    let c = env.container("hostnet", &["sh", "-c", "cat /proc/net/dev"]);
    let id = env.run(&sandbox, &c)?;
    env.wait_exited(&id, Duration::from_secs(20))?;
    let after = names()?;
    // Other tests add and remove interfaces meanwhile: check those that stayed.
    let stable: Vec<_> = before.iter().filter(|n| after.contains(n)).collect();
    anyhow::ensure!(stable.len() > 1, "the host has only {stable:?}");
    let log = std::fs::read_to_string(&c.log_path)?;
    for name in stable {
        anyhow::ensure!(
            log.contains(&format!(" {name}:")),
            "host interface {name} not seen: {log}"
        );
    }
    env.remove_all_and_check()
}

fn stop_with_grace(env: &Env) -> anyhow::Result<()> {
    let sandbox = env.sandbox("grace")?;
    let polite = env.container(
        "polite",
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 0' TERM; while true; do sleep 0.1; done",
        ],
    );
    let stubborn = env.container(
        "stubborn",
        &["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"],
    );
    let polite_id = env.run(&sandbox, &polite)?;
    let stubborn_id = env.run(&sandbox, &stubborn)?;
    std::thread::sleep(Duration::from_millis(300));

    let t = Instant::now();
    env.block(
        env.runtime
            .stop_container(&polite_id, Duration::from_secs(20)),
    )?;
    anyhow::ensure!(
        t.elapsed() < Duration::from_secs(5),
        "SIGTERM was not handled"
    );
    let status = env.block(env.runtime.container_status(&polite_id))?;
    anyhow::ensure!(status.exit_code == Some(0), "{:?}", status.exit_code);
    anyhow::ensure!(std::fs::read_to_string(&polite.log_path)?.contains("stdout F got-term"));

    let t = Instant::now();
    env.block(
        env.runtime
            .stop_container(&stubborn_id, Duration::from_secs(1)),
    )?;
    let took = t.elapsed();
    anyhow::ensure!(
        took >= Duration::from_secs(1),
        "killed before the grace period: {took:?}"
    );
    anyhow::ensure!(took < Duration::from_secs(8), "SIGKILL came late: {took:?}");
    let status = env.block(env.runtime.container_status(&stubborn_id))?;
    anyhow::ensure!(status.exit_code == Some(137) && status.reason.as_deref() == Some("Error"));
    // Stopping again, or stopping something unknown, is fine.
    env.block(
        env.runtime
            .stop_container(&stubborn_id, Duration::from_secs(1)),
    )?;
    env.block(
        env.runtime
            .stop_container("0123456789abcdef0123456789abcdef", Duration::ZERO),
    )?;
    env.remove_all_and_check()
}

fn exec_sync_and_timeout(env: &Env) -> anyhow::Result<()> {
    let sandbox = env.sandbox("exec")?;
    let id = env.run(&sandbox, &env.container("target", &["sleep", "1000"]))?;
    let (code, out, err) = env.exec(
        &id,
        &["sh", "-c", "echo out $GREETING; echo err >&2; exit 7"],
    )?;
    anyhow::ensure!(
        (code, out.as_str(), err.as_str()) == (7, "out hello\n", "err\n"),
        "{code} {out:?} {err:?}"
    );

    let t = Instant::now();
    let argv = vec!["sleep".to_string(), "77".to_string()];
    let result = env.block(
        env.runtime
            .exec_sync(&id, &argv, Duration::from_millis(500)),
    );
    anyhow::ensure!(result.is_err_and(|e| e.to_string().contains("timed out")));
    anyhow::ensure!(t.elapsed() < Duration::from_secs(5));
    let (_, ps, _) = retry(Duration::from_secs(5), || {
        let r = env.exec(&id, &["ps"])?;
        anyhow::ensure!(
            !r.1.contains("sleep 77"),
            "the timed-out command still runs"
        );
        Ok(r)
    })?;
    anyhow::ensure!(ps.contains("sleep 1000"));

    env.block(env.runtime.stop_container(&id, Duration::ZERO))?;
    let err = env
        .exec(&id, &["true"])
        .expect_err("exec in a stopped container");
    anyhow::ensure!(err.to_string().contains("not running"), "{err}");
    env.remove_all_and_check()
}

fn exec_with_tty(env: &Env) -> anyhow::Result<()> {
    let sandbox = env.sandbox("tty")?;
    let id = env.run(&sandbox, &env.container("target", &["sleep", "1000"]))?;
    let (stdin_ours, stdin_theirs) = tokio::io::duplex(4096);
    let (stdout_theirs, mut stdout_ours) = tokio::io::duplex(64 * 1024);
    let (resize_tx, resize_rx) = tokio::sync::mpsc::channel(4);
    let streams = ExecStreams {
        stdin: Some(Box::pin(stdin_theirs)),
        stdout: Some(Box::pin(stdout_theirs)),
        stderr: None,
        tty: true,
        resize: Some(resize_rx),
    };
    let argv = vec!["sh".to_string()];
    let (code, output) = env.block(async {
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = stdout_ours.read_to_end(&mut out).await;
            out
        });
        let writer = tokio::spawn(async move {
            let mut stdin_ours = stdin_ours;
            resize_tx
                .send(TerminalSize {
                    width: 123,
                    height: 45,
                })
                .await
                .ok();
            tokio::time::sleep(Duration::from_millis(500)).await;
            stdin_ours
                .write_all(b"stty size; tty; echo x$((6*7))x; exit 5\n")
                .await
                .ok();
            // Keep stdin open until the shell has exited by itself.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(resize_tx);
        });
        let code = env.runtime.exec(&id, &argv, streams).await;
        writer.abort();
        let out = reader.await.unwrap_or_default();
        (code, String::from_utf8_lossy(&out).into_owned())
    });
    let code = code?;
    anyhow::ensure!(code == 5, "exit code {code}, output {output:?}");
    anyhow::ensure!(output.contains("45 123"), "size not applied: {output:?}");
    anyhow::ensure!(output.contains("/dev/pts/"), "not a terminal: {output:?}");
    anyhow::ensure!(output.contains("x42x"), "{output:?}");
    env.remove_all_and_check()
}

fn readoption_after_restart(env: &Env) -> anyhow::Result<()> {
    let sandbox = env.sandbox("readopt")?;
    let c = env.container("long", &["sh", "-c", "echo before; sleep 1000"]);
    let id = env.run(&sandbox, &c)?;
    let done = env.run(&sandbox, &env.container("done", &["true"]))?;
    env.wait_exited(&done, Duration::from_secs(20))?;

    // The container's shim is detached from us: another parent, another session, so it
    // survives the agent's exit.
    let started: serde_json::Value = serde_json::from_slice(&std::fs::read(
        env.options
            .state_dir
            .join("containers")
            .join(&id)
            .join("started.json"),
    )?)?;
    let shim_pid = started["shim_pid"].as_i64().expect("shim pid");
    let stat = std::fs::read_to_string(format!("/proc/{shim_pid}/stat"))?;
    // Fields after the command's closing parenthesis: state, ppid, pgrp, session.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split(' ')
        .collect();
    let (ppid, session): (u32, u32) = (fields[1].parse()?, fields[3].parse()?);
    // SAFETY: getsid(0) has no preconditions.
    let our_session = unsafe { libc::getsid(0) } as u32;
    anyhow::ensure!(ppid != std::process::id(), "the shim is still our child");
    anyhow::ensure!(session != our_session, "the shim shares our session");

    // A new runtime over the same state, as after an agent restart.
    let second = OciRuntime::new(env.options.clone())?;
    let sandboxes = env.block(second.list_sandboxes())?;
    anyhow::ensure!(sandboxes.len() == 1 && sandboxes[0].id == sandbox.id && sandboxes[0].ready);
    anyhow::ensure!(sandboxes[0].ip == sandbox.ip);
    let containers = env.block(second.list_containers())?;
    let running: Vec<_> = containers
        .iter()
        .filter(|c| c.state == ContainerState::Running)
        .collect();
    anyhow::ensure!(running.len() == 1 && running[0].id == id, "{containers:?}");
    anyhow::ensure!(
        running[0].name == "long" && running[0].image.layers == vec![env.layer.clone()]
    );
    let finished = containers.iter().find(|c| c.id == done).expect("listed");
    anyhow::ensure!(finished.reason.as_deref() == Some("Completed"));

    // A new sandbox gets a different address than the adopted one.
    let config = SandboxConfig {
        pod_uid: format!("uid-readopt2-{}", std::process::id()),
        name: "readopt2".into(),
        ..Default::default()
    };
    let fresh = env.block(second.run_sandbox(&config))?;
    env.record_netns(&fresh);
    anyhow::ensure!(fresh.ip.is_some() && fresh.ip != sandbox.ip);

    env.block(second.stop_container(&id, Duration::from_millis(200)))?;
    let status = env.block(second.container_status(&id))?;
    anyhow::ensure!(status.state == ContainerState::Exited && status.exit_code == Some(137));
    env.block(second.stop_sandbox(&sandbox.id))?;
    anyhow::ensure!(
        !env.block(env.runtime.list_sandboxes())?
            .iter()
            .any(|s| s.id == sandbox.id && s.ready)
    );
    env.remove_all_and_check()?;
    // Logs stay after removal.
    anyhow::ensure!(std::fs::read_to_string(&c.log_path)?.contains("stdout F before"));
    Ok(())
}
