//! Generates a container's OCI runtime `config.json` (the bundle runc runs) from a
//! [`ContainerConfig`], with Docker's defaults for what Kubernetes leaves unsaid: the default
//! capability set, the masked and read-only `/proc` paths, the standard kernel filesystems.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use crate::runtime::ContainerConfig;

/// The CFS period every CPU quota is expressed against (upstream's fixed 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a container's network and pod files come from.
pub struct SandboxView<'a> {
    /// The sandbox's network namespace; `None` means the host's (host networking).
    pub netns: Option<&'a Path>,
    pub hostname: &'a str,
    /// The pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` on the host.
    pub hosts_file: &'a Path,
    pub hostname_file: &'a Path,
    pub resolv_file: &'a Path,
}

/// Builds the runtime spec. `cgroups_path` is relative to each cgroup controller's root.
///
/// Caveat: every container gets its own IPC namespace (there is no pod-level holder process
/// to share one through), so System V IPC between containers of one pod does not work.
pub fn build(
    config: &ContainerConfig,
    sandbox: &SandboxView<'_>,
    cgroups_path: &str,
) -> anyhow::Result<Spec> {
    let argv = if config.argv.is_empty() {
        anyhow::bail!("container {:?} has no command to run", config.name);
    } else {
        config.argv.clone()
    };
    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", sandbox.hostname));
    }
    if config.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_string());
    }
    let cwd = config
        .working_dir
        .clone()
        .or_else(|| config.image.config.working_dir.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        anyhow::bail!("working directory {cwd:?} is not absolute");
    }
    let (uid, gid) = config.user.unwrap_or((0, 0));

    let caps: HashSet<Capability> = docker_default_capabilities().into_iter().collect();
    let process = ProcessBuilder::default()
        .terminal(config.tty)
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .args(argv)
        .env(env)
        .cwd(PathBuf::from(cwd))
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()?,
        )
        .no_new_privileges(false)
        .build()?;

    let mut mounts = standard_mounts()?;
    for (dest, source) in [
        ("/etc/hosts", sandbox.hosts_file),
        ("/etc/hostname", sandbox.hostname_file),
        ("/etc/resolv.conf", sandbox.resolv_file),
    ] {
        mounts.push(bind_mount(dest, source, false)?);
    }
    for m in &config.mounts {
        if !m.container_path.starts_with('/') {
            anyhow::bail!("mount path {:?} is not absolute", m.container_path);
        }
        mounts.push(bind_mount(&m.container_path, &m.host_path, m.read_only)?);
    }

    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid, None)?,
        namespace(LinuxNamespaceType::Ipc, None)?,
        namespace(LinuxNamespaceType::Mount, None)?,
    ];
    // Host-network pods share the host's network and UTS namespaces, as upstream's.
    if let Some(netns) = sandbox.netns {
        namespaces.push(namespace(LinuxNamespaceType::Uts, None)?);
        namespaces.push(namespace(LinuxNamespaceType::Network, Some(netns))?);
    }

    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        // Deny every device; runc then allows its standard set (null, zero, tty, pts, …).
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ]);
    let r = &config.resources;
    if r.cpu_shares.is_some() || r.cpu_quota_us.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(shares) = r.cpu_shares {
            cpu = cpu.shares(shares.max(2));
        }
        if let Some(quota) = r.cpu_quota_us {
            // The kernel refuses quotas under 1 ms.
            cpu = cpu.quota(quota.max(1000)).period(CPU_PERIOD_US);
        }
        resources = resources.cpu(cpu.build()?);
    }
    if let Some(limit) = r.memory_limit_bytes {
        if limit <= 0 {
            anyhow::bail!("memory limit {limit} is not positive");
        }
        // Swap equal to the limit: no swap on top of memory, as upstream.
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()?,
        );
    }
    if let Some(limit) = r.pids_limit {
        if limit <= 0 {
            anyhow::bail!("pids limit {limit} is not positive");
        }
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build()?)
        .cgroups_path(PathBuf::from(cgroups_path))
        .masked_paths(
            [
                "/proc/asound",
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ]
            .map(String::from)
            .to_vec(),
        )
        .readonly_paths(
            [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]
            .map(String::from)
            .to_vec(),
        );

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux.build()?)
        .build()?;
    if sandbox.netns.is_some() {
        spec.set_hostname(Some(sandbox.hostname.to_string()));
    } else {
        spec.set_hostname(None);
    }
    Ok(spec)
}

fn namespace(
    typ: LinuxNamespaceType,
    path: Option<&Path>,
) -> anyhow::Result<oci_spec::runtime::LinuxNamespace> {
    let mut ns = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(path) = path {
        ns = ns.path(path.to_path_buf());
    }
    Ok(ns.build()?)
}

/// Docker's default capability set.
fn docker_default_capabilities() -> Vec<Capability> {
    vec![
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
}

fn kernel_mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> anyhow::Result<Mount> {
    Ok(MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn bind_mount(dest: &str, source: &Path, read_only: bool) -> anyhow::Result<Mount> {
    Ok(MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ("bind")
        .source(source.to_path_buf())
        .options(vec![
            "rbind".to_string(),
            "rprivate".to_string(),
            if read_only { "ro" } else { "rw" }.to_string(),
        ])
        .build()?)
}

fn standard_mounts() -> anyhow::Result<Vec<Mount>> {
    Ok(vec![
        kernel_mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        kernel_mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        kernel_mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        kernel_mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        kernel_mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        kernel_mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        kernel_mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ])
}
