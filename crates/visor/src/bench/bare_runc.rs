//! The floor under `visor bench pods`: the same container started by runc alone, with no
//! Visor in the way.
//!
//! `runc run --detach` of runc's own default spec (`runc spec`), running `sleep` from a
//! busybox root filesystem, timed from the program's start to its exit (runc exits once the
//! container's process runs). One at a time and in a burst of the same sizes as the pods, so
//! the pod figures can be read against what the runtime itself costs on the machine. What
//! Visor adds on top — the API round trips, the sandbox's network, the overlay mount, the
//! shim, the status write — is the difference.
//!
//! Every container gets its own cgroup (`/visor-bench-PID-N` in each controller) and is
//! removed with `runc delete --force`, on the error paths too.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::process::Command;

use super::stats::Latencies;

/// The containers one floor measurement starts, removed when it is dropped.
pub struct BareRunc {
    runc: PathBuf,
    work: tempfile::TempDir,
    /// The prepared `config.json`, with `cgroupsPath` filled per container.
    spec: Value,
    started: Vec<String>,
    next: usize,
}

impl BareRunc {
    /// Prepares a busybox root filesystem and runc's default spec in a scratch directory.
    pub async fn prepare(runc: &Path) -> anyhow::Result<BareRunc> {
        let work = tempfile::tempdir()?;
        let rootfs = work.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin"))?;
        std::fs::copy(
            visor_images::testing::HOST_BUSYBOX,
            rootfs.join("bin/busybox"),
        )
        .with_context(|| {
            format!(
                "copying {} (install the busybox-static package)",
                visor_images::testing::HOST_BUSYBOX
            )
        })?;
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep"))?;
        let template = work.path().join("template");
        std::fs::create_dir_all(&template)?;
        let output = Command::new(runc)
            .arg("spec")
            .arg("--bundle")
            .arg(&template)
            .output()
            .await
            .with_context(|| format!("running {} spec", runc.display()))?;
        if !output.status.success() {
            bail!(
                "{} spec failed: {}",
                runc.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let mut spec: Value =
            serde_json::from_slice(&std::fs::read(template.join("config.json"))?)?;
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(["/bin/sleep", "3600"]);
        spec["root"]["path"] = rootfs.to_string_lossy().as_ref().into();
        spec["root"]["readonly"] = true.into();
        Ok(BareRunc {
            runc: runc.to_path_buf(),
            work,
            spec,
            started: Vec::new(),
            next: 0,
        })
    }

    fn state_root(&self) -> PathBuf {
        self.work.path().join("state")
    }

    /// Writes one container's bundle; its ID.
    fn bundle(&mut self) -> anyhow::Result<(String, PathBuf)> {
        let id = format!("visor-bench-{}-{}", std::process::id(), self.next);
        self.next += 1;
        let dir = self.work.path().join(&id);
        std::fs::create_dir_all(&dir)?;
        let mut spec = self.spec.clone();
        spec["linux"]["cgroupsPath"] = format!("/{id}").into();
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec)?)?;
        Ok((id, dir))
    }

    /// Starts `count` containers one after another, each removed before the next starts.
    pub async fn one_at_a_time(&mut self, count: usize) -> anyhow::Result<Latencies> {
        let mut latencies = Latencies::new();
        for _ in 0..count {
            let (id, bundle) = self.bundle()?;
            self.started.push(id.clone());
            latencies.push(run_detached(&self.runc, &self.state_root(), &id, &bundle).await?);
            self.remove_all();
        }
        Ok(latencies)
    }

    /// Starts `count` containers at once; each one's time from its runc's start to its exit.
    pub async fn burst(&mut self, count: usize) -> anyhow::Result<(Latencies, Duration)> {
        let bundles = (0..count)
            .map(|_| self.bundle())
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.started
            .extend(bundles.iter().map(|(id, _)| id.clone()));
        let root = self.state_root();
        let started = Instant::now();
        let runs = bundles
            .iter()
            .map(|(id, bundle)| run_detached(&self.runc, &root, id, bundle));
        let times = futures::future::try_join_all(runs).await?;
        let all = started.elapsed();
        self.remove_all();
        let mut latencies = Latencies::new();
        for time in times {
            latencies.push(time);
        }
        Ok((latencies, all))
    }

    /// Force-deletes every container started so far (runc removes its cgroups with it).
    fn remove_all(&mut self) {
        let root = self.state_root();
        for id in self.started.drain(..) {
            let _ = std::process::Command::new(&self.runc)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for BareRunc {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// `runc run --detach`: how long until runc exits with the container running. runc's
/// errors go to a file: the container inherits runc's standard streams, so a pipe would stay
/// open as long as the container runs.
async fn run_detached(
    runc: &Path,
    root: &Path,
    id: &str,
    bundle: &Path,
) -> anyhow::Result<Duration> {
    let errors = bundle.join("runc.err");
    let started = Instant::now();
    let status = Command::new(runc)
        .arg("--root")
        .arg(root)
        .args(["run", "--detach", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors)?)
        .status()
        .await
        .with_context(|| format!("running {}", runc.display()))?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!(
            "runc run {id} failed ({status}): {}",
            std::fs::read_to_string(&errors).unwrap_or_default().trim()
        );
    }
    Ok(elapsed)
}
