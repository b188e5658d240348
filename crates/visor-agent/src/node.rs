//! The host as a Node: what it measures about itself, registering the Node object, and the
//! two heartbeats upstream kubelets send — a Lease in `kube-node-lease` renewed every few
//! seconds (cheap; the node lifecycle controller watches it) and the Node's `Ready` condition,
//! refreshed less often and at once when it is not what the agent reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// The namespace of node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long a Lease stays valid without renewal, as upstream's kubelet declares it.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// The label that marks a simulated host.
pub const SIMULATED_LABEL: &str = "visor.dev/simulated";
/// The version the agent reports as `kubeletVersion` (`kubectl get nodes` VERSION).
pub const AGENT_VERSION: &str = concat!("v1.32.0-visor.", env!("CARGO_PKG_VERSION"));
const FIELD_MANAGER: &str = "visor-agent";

/// Everything the Node object says about a host.
#[derive(Clone, Debug)]
pub struct HostNode {
    pub name: String,
    pub zone: Option<String>,
    pub internal_ip: String,
    pub daemon_port: u16,
    pub pod_cidr: Option<String>,
    pub capacity: BTreeMap<String, String>,
    pub runtime_version: String,
    pub os_image: String,
    pub kernel_version: String,
    pub simulated: bool,
    pub extra_labels: BTreeMap<String, String>,
}

impl HostNode {
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), self.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), arch().to_string()),
            ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
            ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
        ]);
        if let Some(zone) = &self.zone {
            labels.insert("topology.kubernetes.io/zone".into(), zone.clone());
        }
        if self.simulated {
            labels.insert(SIMULATED_LABEL.into(), "true".into());
        }
        labels.extend(self.extra_labels.clone());
        labels
    }

    fn status(&self, now: &Time) -> serde_json::Value {
        let capacity: BTreeMap<&String, Quantity> = self
            .capacity
            .iter()
            .map(|(k, v)| (k, Quantity(v.clone())))
            .collect();
        json!({
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                NodeAddress { type_: "InternalIP".into(), address: self.internal_ip.clone() },
                NodeAddress { type_: "Hostname".into(), address: self.name.clone() },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": self.daemon_port } },
            "nodeInfo": {
                "machineID": read_trimmed("/etc/machine-id"),
                "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid"),
                "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": self.kernel_version,
                "osImage": self.os_image,
                "containerRuntimeVersion": self.runtime_version,
                "kubeletVersion": AGENT_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch(),
            },
            "conditions": conditions(now),
        })
    }
}

fn conditions(now: &Time) -> Vec<NodeCondition> {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    vec![
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "visor agent has sufficient memory available",
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "visor agent has no disk pressure",
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "visor agent has sufficient PID available",
        ),
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "visor agent is posting ready status",
        ),
    ]
}

/// `amd64`, `arm64`, … as Kubernetes names architectures.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What the host has: CPUs, memory, the data directory's filesystem and a pod count.
pub fn measure_capacity(
    data_dir: &Path,
    max_pods: u32,
) -> anyhow::Result<BTreeMap<String, String>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let memory_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("/proc/meminfo has no MemTotal")?;
    let storage = filesystem_size(data_dir)?;
    Ok(BTreeMap::from([
        ("cpu".into(), cpus.to_string()),
        ("memory".into(), format!("{memory_kib}Ki")),
        ("ephemeral-storage".into(), storage.to_string()),
        ("pods".into(), max_pods.to_string()),
    ]))
}

fn filesystem_size(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed out-struct it fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    Ok(stat.f_blocks as u64 * stat.f_frsize as u64)
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    read_trimmed("/proc/sys/kernel/osrelease")
}

/// The distribution's name, as `/etc/os-release` gives it.
pub fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// Creates the Node, or brings an existing one (an earlier run of this host) up to date, and
/// reports it Ready. Returns the Node's UID, which the Lease names as its owner.
pub async fn register(client: &kube::Client, host: &HostNode) -> anyhow::Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(host.name.clone()),
            labels: Some(host.labels()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: host.pod_cidr.clone(),
            pod_cidrs: host.pod_cidr.clone().map(|c| vec![c]),
            ..Default::default()
        }),
        status: None,
    };
    let uid = match nodes.create(&PostParams::default(), &node).await {
        Ok(created) => created.metadata.uid,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = json!({
                "metadata": { "labels": host.labels() },
                "spec": { "podCIDR": host.pod_cidr, "podCIDRs": host.pod_cidr.clone().map(|c| vec![c]) },
            });
            nodes
                .patch(&host.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("updating Node {}", host.name))?
                .metadata
                .uid
        }
        Err(e) => return Err(e).with_context(|| format!("registering Node {}", host.name)),
    };
    report_status(client, host).await?;
    uid.context("the server returned a Node without a UID")
}

/// Writes the Node's status: capacity, addresses, node info and fresh conditions.
pub async fn report_status(client: &kube::Client, host: &HostNode) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Time(jiff::Timestamp::now());
    let patch = json!({ "status": host.status(&now) });
    nodes
        .patch_status(
            &host.name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .with_context(|| format!("reporting the status of Node {}", host.name))?;
    Ok(())
}

/// Keeps the host's Lease renewed and its Ready condition true until cancelled.
///
/// Flow: renew the Lease every `lease_interval` (keeping the revision last written, so a
/// renewal is one small patch conditional on it; a conflict re-reads the Lease); every `status_interval`, read the Node and rewrite its
/// status when `Ready` is not `True` (the node lifecycle controller marks a silent host
/// `Unknown`; the host says so again once it is back) or the heartbeat is old.
pub async fn heartbeat(
    client: kube::Client,
    host: HostNode,
    node_uid: String,
    lease_interval: Duration,
    status_interval: Duration,
    spread: bool,
) {
    // Many hosts in one process renew at spread-out instants, not all at once.
    if spread {
        let fraction: f64 = rand::random();
        tokio::time::sleep(lease_interval.mul_f64(fraction)).await;
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let nodes: Api<Node> = Api::all(client.clone());
    let mut kept: Option<String> = None;
    let mut lease_tick = tokio::time::interval(lease_interval);
    lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_tick = tokio::time::interval(status_interval);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status_tick.tick().await;
    loop {
        tokio::select! {
            _ = lease_tick.tick() => {
                match renew_lease(&client, &leases, &host.name, &node_uid, kept.take()).await {
                    Ok(revision) => kept = Some(revision),
                    Err(e) => tracing::warn!(node = %host.name, "renewing the node lease: {e:#}"),
                }
            }
            _ = status_tick.tick() => {
                let stale = match nodes.get_status(&host.name).await {
                    Ok(node) => needs_status(&node, status_interval),
                    Err(e) => {
                        tracing::warn!(node = %host.name, "reading the Node: {e}");
                        true
                    }
                };
                if stale && let Err(e) = report_status(&client, &host).await {
                    tracing::warn!(node = %host.name, "{e:#}");
                }
            }
        }
    }
}

/// Whether the Node's status needs rewriting: not Ready, or its heartbeat older than about
/// five intervals (upstream's kubelet reports at least every five minutes; this keeps
/// `lastHeartbeatTime` meaningful at the agent's own pace).
fn needs_status(node: &Node, interval: Duration) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => c.last_heartbeat_time.as_ref().is_none_or(|t| {
            let age = jiff::Timestamp::now().duration_since(t.0);
            age.as_secs() as u64 > (interval * 5).as_secs()
        }),
        _ => true,
    }
}

/// The part of a written Lease a renewal keeps: its revision. Reading no more of the answer
/// spares decoding its managed fields on every renewal.
#[derive(serde::Deserialize)]
struct Written {
    metadata: WrittenMeta,
}

#[derive(serde::Deserialize)]
struct WrittenMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: String,
}

/// Renews the host's Lease and returns the revision written. With the revision last written,
/// a renewal is one merge patch of the spec on condition of that revision, as the kubelet's
/// update of its last-written Lease is; without one, or when someone else wrote meanwhile,
/// the Lease is read (or created) and replaced.
async fn renew_lease(
    client: &kube::Client,
    leases: &Api<Lease>,
    name: &str,
    node_uid: &str,
    kept: Option<String>,
) -> anyhow::Result<String> {
    let now = MicroTime(jiff::Timestamp::now());
    let spec = |acquire: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(name.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
        renew_time: Some(now.clone()),
        acquire_time: acquire,
        ..Default::default()
    };
    if let Some(revision) = kept {
        let patch = json!({
            "metadata": {"resourceVersion": revision},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": now,
            },
        });
        let request = kube::core::Request::new(leases.resource_url()).patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )?;
        match client.request::<Written>(request).await {
            Ok(written) => return Ok(written.metadata.resource_version),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let written = match leases.get_opt(name).await? {
        Some(mut lease) => {
            let acquire = lease.spec.as_ref().and_then(|s| s.acquire_time.clone());
            lease.spec = Some(spec(acquire.or(Some(now.clone()))));
            leases.replace(name, &PostParams::default(), &lease).await?
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(LEASE_NAMESPACE.to_string()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.to_string(),
                        uid: node_uid.to_string(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(spec(Some(now.clone()))),
            };
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            leases.create(&params, &lease).await?
        }
    };
    written
        .metadata
        .resource_version
        .context("the server wrote the Lease without a resourceVersion")
}
