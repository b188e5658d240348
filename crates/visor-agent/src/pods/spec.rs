//! From a pod's spec to what the runtime needs: environment (with `valueFrom`, `envFrom` and
//! `$(VAR)` expansion as upstream), argv, cgroup resources, and the pod's volumes on disk.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, Pod, Secret,
    Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;

use crate::runtime::{ImageConfig, Mount, Resources};

/// Why a container cannot be configured yet; shown as the container's waiting reason.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// `CreateContainerConfigError` as upstream.
    pub reason: &'static str,
    pub message: String,
}

fn config_error(message: impl Into<String>) -> ConfigError {
    ConfigError {
        reason: "CreateContainerConfigError",
        message: message.into(),
    }
}

/// Reads the ConfigMaps and Secrets a pod refers to, once per sync.
pub struct References<'a> {
    pub client: &'a kube::Client,
    pub namespace: &'a str,
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl<'a> References<'a> {
    pub fn new(client: &'a kube::Client, namespace: &'a str) -> Self {
        References {
            client,
            namespace,
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    async fn config_map(&mut self, name: &str) -> Result<Option<&ConfigMap>, ConfigError> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
            let found = api
                .get_opt(name)
                .await
                .map_err(|e| config_error(format!("reading configmap {name:?}: {e}")))?;
            self.config_maps.insert(name.to_string(), found);
        }
        Ok(self.config_maps[name].as_ref())
    }

    async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, ConfigError> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
            let found = api
                .get_opt(name)
                .await
                .map_err(|e| config_error(format!("reading secret {name:?}: {e}")))?;
            self.secrets.insert(name.to_string(), found);
        }
        Ok(self.secrets[name].as_ref())
    }

    /// All of a ConfigMap's keys as text (binary data decoded lossily).
    async fn config_map_data(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        Ok(self.config_map(name).await?.map(|cm| {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.clone().unwrap_or_default() {
                data.insert(k, v.0);
            }
            data
        }))
    }

    async fn secret_data(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        Ok(self.secret(name).await?.map(|s| {
            let mut data: BTreeMap<String, Vec<u8>> = s
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.clone().unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            data
        }))
    }
}

/// Facts about the running pod that the downward API exposes.
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub node_name: &'a str,
}

impl PodFacts<'_> {
    /// The value of a downward API field path, as upstream's `ExtractFieldPathAsString`.
    pub fn field(&self, selector: &ObjectFieldSelector) -> Result<String, ConfigError> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let path = selector.field_path.as_str();
        let subscript = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
            path.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix("']"))
                .map(|key| {
                    map.as_ref()
                        .and_then(|m| m.get(key))
                        .cloned()
                        .unwrap_or_default()
                })
        };
        if let Some(v) = subscript("metadata.labels['", &meta.labels) {
            return Ok(v);
        }
        if let Some(v) = subscript("metadata.annotations['", &meta.annotations) {
            return Ok(v);
        }
        let format_map = |map: &Option<BTreeMap<String, String>>| {
            map.iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        Ok(match path {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "metadata.labels" => format_map(&meta.labels),
            "metadata.annotations" => format_map(&meta.annotations),
            "spec.nodeName" => self.node_name.to_string(),
            "spec.serviceAccountName" => spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            "status.podIP" | "status.podIPs" => self.pod_ip.clone().unwrap_or_default(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.clone(),
            other => {
                return Err(config_error(format!(
                    "unsupported downward API field path {other:?}"
                )));
            }
        })
    }
}

/// The value of a `resourceFieldRef` (`limits.cpu`, `requests.memory`, …), in the divisor's
/// unit, rounded up as upstream.
fn resource_field(
    container: &Container,
    resource: &str,
    divisor: Option<&Quantity>,
    node_capacity: &BTreeMap<String, String>,
) -> Result<String, ConfigError> {
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| config_error(format!("unsupported resource field {resource:?}")))?;
    let resources = container.resources.clone().unwrap_or_default();
    let map = match section {
        "limits" => resources.limits,
        "requests" => resources.requests,
        _ => {
            return Err(config_error(format!(
                "unsupported resource field {resource:?}"
            )));
        }
    };
    let value = map
        .as_ref()
        .and_then(|m| m.get(name))
        .map(|q| q.0.clone())
        // An unset limit reads as the node's allocatable, as upstream.
        .or_else(|| {
            (section == "limits")
                .then(|| node_capacity.get(name).cloned())
                .flatten()
        })
        .unwrap_or_else(|| "0".into());
    let amount = parse_quantity(&value)
        .ok_or_else(|| config_error(format!("invalid quantity {value:?} in {resource}")))?;
    let unit = match divisor {
        Some(q) => parse_quantity(&q.0)
            .filter(|d| *d > 0.0)
            .ok_or_else(|| config_error(format!("invalid divisor {:?}", q.0)))?,
        None => 1.0,
    };
    Ok(((amount / unit).ceil() as i64).to_string())
}

/// A Kubernetes quantity as a number (`500m` → 0.5, `1Gi` → 1073741824).
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

/// The container's environment, in upstream's order: the image's, then `envFrom`, then
/// `env`, each later one overriding; `$(VAR)` references to earlier variables expanded.
pub async fn environment(
    container: &Container,
    image: &ImageConfig,
    facts: &PodFacts<'_>,
    references: &mut References<'_>,
    node_capacity: &BTreeMap<String, String>,
) -> Result<Vec<String>, ConfigError> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut set = |name: String, value: String, order: &mut Vec<String>| {
        if values.insert(name.clone(), value).is_none() {
            order.push(name);
        }
    };
    for entry in &image.env {
        if let Some((k, v)) = entry.split_once('=') {
            set(k.to_string(), v.to_string(), &mut order);
        }
    }
    // Variables a pod defines itself, for `$(VAR)` expansion: not the image's.
    let mut defined: HashMap<String, String> = HashMap::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(cm) = &source.config_map_ref {
            (
                references.config_map_data(&cm.name).await?,
                cm.optional.unwrap_or(false),
                format!("configmap {:?}", cm.name),
            )
        } else if let Some(secret) = &source.secret_ref {
            (
                references.secret_data(&secret.name).await?,
                secret.optional.unwrap_or(false),
                format!("secret {:?}", secret.name),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    let name = format!("{prefix}{k}");
                    let value = String::from_utf8_lossy(&v).into_owned();
                    defined.insert(name.clone(), value.clone());
                    set(name, value, &mut order);
                }
            }
            None if optional => {}
            None => return Err(config_error(format!("{what} not found"))),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => expand(v, &defined),
            (None, Some(from)) => {
                if let Some(key) = &from.config_map_key_ref {
                    let data = references.config_map_data(&key.name).await?;
                    match data.as_ref().and_then(|d| d.get(&key.key)) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if key.optional.unwrap_or(false) => continue,
                        None if data.is_none() => {
                            return Err(config_error(format!(
                                "configmap {:?} not found",
                                key.name
                            )));
                        }
                        None => {
                            return Err(config_error(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                key.key, references.namespace, key.name
                            )));
                        }
                    }
                } else if let Some(key) = &from.secret_key_ref {
                    let data = references.secret_data(&key.name).await?;
                    match data.as_ref().and_then(|d| d.get(&key.key)) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if key.optional.unwrap_or(false) => continue,
                        None if data.is_none() => {
                            return Err(config_error(format!("secret {:?} not found", key.name)));
                        }
                        None => {
                            return Err(config_error(format!(
                                "couldn't find key {} in Secret {}/{}",
                                key.key, references.namespace, key.name
                            )));
                        }
                    }
                } else if let Some(field) = &from.field_ref {
                    facts.field(field)?
                } else if let Some(resource) = &from.resource_field_ref {
                    resource_field(
                        container,
                        &resource.resource,
                        resource.divisor.as_ref(),
                        node_capacity,
                    )?
                } else {
                    String::new()
                }
            }
            (None, None) => String::new(),
        };
        defined.insert(var.name.clone(), value.clone());
        set(var.name.clone(), value, &mut order);
    }
    Ok(order
        .into_iter()
        .map(|name| {
            let value = &values[&name];
            format!("{name}={value}")
        })
        .collect())
}

/// Upstream's `$(VAR)` expansion: a reference to a defined variable is replaced, `$$` is an
/// escaped `$`, anything else is kept as written.
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match vars.get(name) {
                            Some(v) => out.push_str(v),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The argv a container runs: `command` replaces the image's entrypoint, `args` its cmd, as
/// upstream; both expanded against the container's environment.
pub fn argv(container: &Container, image: &ImageConfig, env: &[String]) -> Vec<String> {
    let vars: HashMap<String, String> = env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    let (head, tail) = match (command.is_empty(), args.is_empty()) {
        (false, _) => (command, args),
        (true, false) => (image.entrypoint.clone(), args),
        (true, true) => (image.entrypoint.clone(), image.cmd.clone()),
    };
    head.iter()
        .chain(tail.iter())
        .map(|a| expand(a, &vars))
        .collect()
}

/// cgroup settings from the container's requests and limits (upstream's conversions).
pub fn resources(container: &Container, pids_limit: Option<i64>) -> Resources {
    let spec = container.resources.clone().unwrap_or_default();
    let get = |map: &Option<BTreeMap<String, Quantity>>, name: &str| {
        map.as_ref()
            .and_then(|m| m.get(name))
            .and_then(|q| parse_quantity(&q.0))
    };
    let cpu_request = get(&spec.requests, "cpu").or_else(|| get(&spec.limits, "cpu"));
    let cpu_limit = get(&spec.limits, "cpu");
    let memory_limit = get(&spec.limits, "memory");
    Resources {
        cpu_shares: Some(
            cpu_request
                .map(|cores| ((cores * 1000.0).round() as u64 * 1024 / 1000).max(2))
                .unwrap_or(2),
        ),
        cpu_quota_us: cpu_limit.map(|cores| ((cores * 100_000.0).round() as i64).max(1000)),
        memory_limit_bytes: memory_limit.map(|b| b as i64),
        pids_limit,
    }
}

/// Numeric user and group the container runs as: the security context's, else the image's
/// when numeric.
pub fn user(pod: &Pod, container: &Container, image: &ImageConfig) -> Option<(u32, u32)> {
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let context = container.security_context.as_ref();
    let uid = context
        .and_then(|c| c.run_as_user)
        .or_else(|| pod_context.and_then(|c| c.run_as_user));
    let gid = context
        .and_then(|c| c.run_as_group)
        .or_else(|| pod_context.and_then(|c| c.run_as_group));
    let from_image = image.user.as_deref().and_then(|u| {
        let (user, group) = u.split_once(':').unwrap_or((u, ""));
        let uid: u32 = user.parse().ok()?;
        Some((uid, group.parse().unwrap_or(uid)))
    });
    match (uid, from_image) {
        (Some(uid), _) => Some((uid as u32, gid.unwrap_or(0) as u32)),
        (None, Some((u, g))) => Some((u, gid.map_or(g, |g| g as u32))),
        (None, None) => gid.map(|g| (0, g as u32)),
    }
}

/// Fetches a projected service account token: (path, audience, expiration seconds) → token.
pub type TokenSource<'a> = dyn Fn(
        &str,
        Option<&str>,
        Option<i64>,
    ) -> futures::future::BoxFuture<'static, anyhow::Result<String>>
    + Sync
    + 'a;

/// A file to write into a volume: relative path, content, mode.
type VolumeFile = (String, Vec<u8>, Option<i32>);

/// The pod's volumes, prepared on disk under `pod_dir/volumes`.
pub struct PreparedVolumes {
    pub paths: HashMap<String, PathBuf>,
    /// tmpfs mounts to undo when the pod goes.
    pub mounts: Vec<PathBuf>,
}

/// Prepares every volume the runtime can bind: emptyDir, configMap, secret, hostPath,
/// downwardAPI and projected (with service account tokens from `token`).
///
/// Guarantees: a missing non-optional ConfigMap or Secret is an error naming it, and nothing
/// is mounted for it; files are written atomically (write then rename).
pub async fn prepare_volumes(
    pod: &Pod,
    pod_dir: &Path,
    facts: &PodFacts<'_>,
    references: &mut References<'_>,
    token: &TokenSource<'_>,
) -> anyhow::Result<PreparedVolumes> {
    let mut prepared = PreparedVolumes {
        paths: HashMap::new(),
        mounts: Vec::new(),
    };
    let volumes: Vec<Volume> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for volume in volumes {
        let dir = pod_dir.join("volumes").join(&volume.name);
        let path = if let Some(empty) = &volume.empty_dir {
            std::fs::create_dir_all(&dir)?;
            if empty.medium.as_deref() == Some("Memory") && !is_mounted(&dir) {
                let size = empty
                    .size_limit
                    .as_ref()
                    .and_then(|q| parse_quantity(&q.0))
                    .map(|b| format!(",size={}", b as u64))
                    .unwrap_or_default();
                mount_tmpfs(&dir, &size)?;
                prepared.mounts.push(dir.clone());
            }
            dir
        } else if let Some(host) = &volume.host_path {
            host_path(&host.path, host.type_.as_deref())?
        } else if let Some(cm) = &volume.config_map {
            match references.config_map_data(&cm.name).await? {
                Some(data) => {
                    write_keys(&dir, &data, cm.items.as_deref(), cm.default_mode)?;
                }
                None if cm.optional.unwrap_or(false) => std::fs::create_dir_all(&dir)?,
                None => anyhow::bail!("configmap {:?} not found", cm.name),
            }
            dir
        } else if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            match references.secret_data(&name).await? {
                Some(data) => {
                    write_keys(&dir, &data, secret.items.as_deref(), secret.default_mode)?;
                }
                None if secret.optional.unwrap_or(false) => std::fs::create_dir_all(&dir)?,
                None => anyhow::bail!("secret {name:?} not found"),
            }
            dir
        } else if let Some(downward) = &volume.downward_api {
            let files = downward_files(downward.items.as_deref().unwrap_or(&[]), facts)?;
            write_files(&dir, &files, downward.default_mode)?;
            dir
        } else if let Some(projected) = &volume.projected {
            let mut files: Vec<VolumeFile> = Vec::new();
            for source in projected.sources.iter().flatten() {
                if let Some(cm) = &source.config_map {
                    match references.config_map_data(&cm.name).await? {
                        Some(data) => files.extend(select_keys(&data, cm.items.as_deref())),
                        None if cm.optional.unwrap_or(false) => {}
                        None => anyhow::bail!("configmap {:?} not found", cm.name),
                    }
                }
                if let Some(secret) = &source.secret {
                    match references.secret_data(&secret.name).await? {
                        Some(data) => files.extend(select_keys(&data, secret.items.as_deref())),
                        None if secret.optional.unwrap_or(false) => {}
                        None => anyhow::bail!("secret {:?} not found", secret.name),
                    }
                }
                if let Some(downward) = &source.downward_api {
                    files.extend(downward_files(
                        downward.items.as_deref().unwrap_or(&[]),
                        facts,
                    )?);
                }
                if let Some(sat) = &source.service_account_token {
                    let text =
                        token(&sat.path, sat.audience.as_deref(), sat.expiration_seconds).await?;
                    files.push((sat.path.clone(), text.into_bytes(), None));
                }
            }
            write_files(&dir, &files, projected.default_mode)?;
            dir
        } else {
            anyhow::bail!(
                "volume {:?}: this host supports emptyDir, configMap, secret, hostPath, downwardAPI and projected volumes",
                volume.name
            );
        };
        prepared.paths.insert(volume.name.clone(), path);
    }
    Ok(prepared)
}

fn select_keys(data: &BTreeMap<String, Vec<u8>>, items: Option<&[KeyToPath]>) -> Vec<VolumeFile> {
    match items {
        Some(items) => items
            .iter()
            .filter_map(|item| {
                data.get(&item.key)
                    .map(|v| (item.path.clone(), v.clone(), item.mode))
            })
            .collect(),
        None => data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), None))
            .collect(),
    }
}

fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> anyhow::Result<()> {
    if let Some(items) = items
        && let Some(missing) = items.iter().find(|i| !data.contains_key(&i.key))
    {
        anyhow::bail!("couldn't find key {} in the volume's source", missing.key);
    }
    write_files(dir, &select_keys(data, items), default_mode)
}

fn downward_files(
    items: &[DownwardAPIVolumeFile],
    facts: &PodFacts<'_>,
) -> anyhow::Result<Vec<VolumeFile>> {
    items
        .iter()
        .map(|item| {
            let value = match &item.field_ref {
                Some(field) => facts.field(field)?,
                None => String::new(),
            };
            Ok((item.path.clone(), value.into_bytes(), item.mode))
        })
        .collect()
}

/// Writes files below `dir`, refusing paths that would leave it.
fn write_files(dir: &Path, files: &[VolumeFile], default_mode: Option<i32>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    for (relative, content, mode) in files {
        let relative_path = Path::new(relative);
        anyhow::ensure!(
            relative_path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "volume path {relative:?} must be relative and must not contain '..'"
        );
        let target = dir.join(relative_path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temporary = target.with_extension("visor-tmp");
        std::fs::write(&temporary, content)
            .with_context(|| format!("writing {}", temporary.display()))?;
        let mode = mode.or(default_mode).unwrap_or(0o644) as u32;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&temporary, &target)?;
    }
    Ok(())
}

/// Checks (and for the `...OrCreate` types creates) a hostPath as upstream's types say.
fn host_path(path: &str, kind: Option<&str>) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(path);
    let meta = std::fs::metadata(&path).ok();
    let fail = |what: &str| {
        anyhow::anyhow!(
            "hostPath type check failed: {} is not a {what}",
            path.display()
        )
    };
    match kind.unwrap_or("") {
        "" => {}
        "DirectoryOrCreate" => {
            if meta.is_none() {
                std::fs::create_dir_all(&path)?;
            } else if !meta.as_ref().is_some_and(|m| m.is_dir()) {
                return Err(fail("directory"));
            }
        }
        "Directory" if !meta.as_ref().is_some_and(|m| m.is_dir()) => return Err(fail("directory")),
        "FileOrCreate" => {
            if meta.is_none() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::File::create(&path)?;
            } else if !meta.as_ref().is_some_and(|m| m.is_file()) {
                return Err(fail("file"));
            }
        }
        "File" if !meta.as_ref().is_some_and(|m| m.is_file()) => return Err(fail("file")),
        "Socket" | "CharDevice" | "BlockDevice" => {
            use std::os::unix::fs::FileTypeExt;
            let Some(meta) = meta else {
                return Err(fail(kind.unwrap_or_default()));
            };
            let ft = meta.file_type();
            let ok = match kind {
                Some("Socket") => ft.is_socket(),
                Some("CharDevice") => ft.is_char_device(),
                _ => ft.is_block_device(),
            };
            if !ok {
                return Err(fail(kind.unwrap_or_default()));
            }
        }
        "Directory" | "File" => {}
        other => anyhow::bail!("unknown hostPath type {other:?}"),
    }
    Ok(path)
}

fn is_mounted(dir: &Path) -> bool {
    let target = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&target)))
        .unwrap_or(false)
}

fn mount_tmpfs(dir: &Path, size: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("mode=0777{size}"), "tmpfs"])
        .arg(dir)
        .status()
        .context("running mount")?;
    anyhow::ensure!(status.success(), "mounting tmpfs on {}", dir.display());
    Ok(())
}

/// Undoes the tmpfs mounts of a pod's memory-backed emptyDirs.
pub fn unmount_all(mounts: &[PathBuf]) {
    for dir in mounts {
        let _ = std::process::Command::new("umount").arg(dir).status();
    }
}

/// Binds a container's volume mounts (with `subPath`) to host paths.
pub fn mounts(container: &Container, volumes: &PreparedVolumes) -> Result<Vec<Mount>, ConfigError> {
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let base = volumes.paths.get(&vm.name).ok_or_else(|| {
            config_error(format!("volume {:?} is mounted but not defined", vm.name))
        })?;
        let host_path = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                if Path::new(sub)
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(config_error(format!(
                        "subPath {sub:?} must be relative and must not contain '..'"
                    )));
                }
                let path = base.join(sub);
                if !path.exists() {
                    std::fs::create_dir_all(&path)
                        .map_err(|e| config_error(format!("creating subPath {sub:?}: {e}")))?;
                }
                path
            }
            None => base.clone(),
        };
        mounts.push(Mount {
            container_path: vm.mount_path.clone(),
            host_path,
            read_only: vm.read_only.unwrap_or(false),
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_upstream() {
        let vars = HashMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("no refs", &vars), "no refs");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("bad"), None);
    }

    #[test]
    fn command_and_args_replace_the_image_defaults() {
        let image = ImageConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["c1".into()],
            ..Default::default()
        };
        let mut c = Container::default();
        assert_eq!(argv(&c, &image, &[]), ["/ep", "c1"]);
        c.args = Some(vec!["$(X)".into()]);
        assert_eq!(argv(&c, &image, &["X=1".into()]), ["/ep", "1"]);
        c.command = Some(vec!["sh".into()]);
        assert_eq!(argv(&c, &image, &[]), ["sh", "$(X)"]);
    }

    #[test]
    fn cpu_and_memory_become_cgroup_settings() {
        let c = Container {
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
                limits: Some(BTreeMap::from([
                    ("cpu".into(), Quantity("500m".into())),
                    ("memory".into(), Quantity("64Mi".into())),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = resources(&c, Some(100));
        assert_eq!(r.cpu_shares, Some(256));
        assert_eq!(r.cpu_quota_us, Some(50_000));
        assert_eq!(r.memory_limit_bytes, Some(64 * 1024 * 1024));
        assert_eq!(r.pids_limit, Some(100));
    }
}
