//! Kubeconfig files: the admin kubeconfig `visor server` writes, and reading one back for the
//! tools that talk to a server (`visor bench`).
//!
//! Only the fields Visor writes and needs are modelled; reading tolerates (and ignores) the
//! rest, so a kubeconfig written by another tool works as long as it uses certificate
//! authentication.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The parts of a kubeconfig file Visor reads and writes.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub clusters: Vec<NamedCluster>,
    #[serde(default)]
    pub users: Vec<NamedUser>,
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
    #[serde(default)]
    pub current_context: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: User,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct User {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: ContextSpec,
}

/// A context: which cluster with which user.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ContextSpec {
    pub cluster: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What a client needs to reach a server and prove who it is, in PEM form.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `https://HOST:PORT`.
    pub server: String,
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Kubeconfig {
    /// A kubeconfig with one cluster `visor`, one user `admin` and one context `visor`, current.
    pub fn admin(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Kubeconfig {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        Kubeconfig {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![NamedCluster {
                name: "visor".into(),
                cluster: Cluster {
                    server: server.into(),
                    certificate_authority_data: Some(b64(ca_pem)),
                    certificate_authority: None,
                },
            }],
            users: vec![NamedUser {
                name: "admin".into(),
                user: User {
                    client_certificate_data: Some(b64(cert_pem)),
                    client_key_data: Some(b64(key_pem)),
                    ..User::default()
                },
            }],
            contexts: vec![NamedContext {
                name: "visor".into(),
                context: ContextSpec {
                    cluster: "visor".into(),
                    user: "admin".into(),
                    namespace: None,
                },
            }],
            current_context: "visor".into(),
        }
    }

    pub fn read(path: &Path) -> anyhow::Result<Kubeconfig> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes the kubeconfig to `path` with mode 0600 (it holds a private key), atomically: a
    /// reader — a person or a tool polling for the file — sees the whole file or none.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        // Plain scalars: the base64 fields are long, and some kubeconfig readers (scripts using
        // grep/sed) expect `key: value` on one line rather than folded blocks.
        let mut options = serde_saphyr::SerializerOptions::default();
        options.prefer_block_scalars = false;
        let yaml = serde_saphyr::to_string_with_options(self, options)
            .context("serializing a kubeconfig")?;
        let dir = path
            .parent()
            .context("a kubeconfig path without a directory")?;
        let name = path
            .file_name()
            .context("a kubeconfig path without a file name")?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| -> std::io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(yaml.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.with_context(|| format!("writing {}", path.display()))
    }

    /// The credentials of the current context. Certificate files named by path are read relative
    /// to the kubeconfig's directory, as kubectl does.
    pub fn credentials(&self, base: &Path) -> anyhow::Result<Credentials> {
        let context = self
            .contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .with_context(|| {
                format!(
                    "the current context {:?} is not defined",
                    self.current_context
                )
            })?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == context.context.cluster)
            .with_context(|| format!("cluster {:?} is not defined", context.context.cluster))?;
        let user = self
            .users
            .iter()
            .find(|u| u.name == context.context.user)
            .with_context(|| format!("user {:?} is not defined", context.context.user))?;
        let ca_pem = data_or_file(
            &cluster.cluster.certificate_authority_data,
            &cluster.cluster.certificate_authority,
            base,
            "certificate-authority",
        )?;
        let client_cert_pem = data_or_file(
            &user.user.client_certificate_data,
            &user.user.client_certificate,
            base,
            "client-certificate",
        )?;
        let client_key_pem = data_or_file(
            &user.user.client_key_data,
            &user.user.client_key,
            base,
            "client-key",
        )?;
        if !cluster.cluster.server.starts_with("https://") {
            bail!("server {:?} is not an https:// URL", cluster.cluster.server);
        }
        Ok(Credentials {
            server: cluster.cluster.server.trim_end_matches('/').to_string(),
            ca_pem,
            client_cert_pem,
            client_key_pem,
        })
    }
}

fn data_or_file(
    data: &Option<String>,
    file: &Option<String>,
    base: &Path,
    what: &str,
) -> anyhow::Result<String> {
    if let Some(data) = data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .with_context(|| format!("{what}-data is not base64"))?;
        return String::from_utf8(bytes).with_context(|| format!("{what}-data is not PEM"));
    }
    if let Some(file) = file {
        let path: PathBuf = base.join(file);
        return fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()));
    }
    bail!(
        "the kubeconfig has no {what}(-data); only client-certificate authentication is supported"
    )
}

/// Reads a kubeconfig file and returns its current context's credentials.
pub fn load_credentials(path: &Path) -> anyhow::Result<Credentials> {
    let base = path.parent().unwrap_or(Path::new("."));
    Kubeconfig::read(path)?.credentials(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_kubeconfig_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.kubeconfig");
        Kubeconfig::admin("https://127.0.0.1:6443", "CA\n", "CERT\n", "KEY\n")
            .write(&path)
            .unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("current-context: visor"), "{text}");
        assert!(text.contains("certificate-authority-data:"), "{text}");
        let credentials = load_credentials(&path).unwrap();
        assert_eq!(credentials.server, "https://127.0.0.1:6443");
        assert_eq!(credentials.ca_pem, "CA\n");
        assert_eq!(credentials.client_cert_pem, "CERT\n");
        assert_eq!(credentials.client_key_pem, "KEY\n");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left"
        );
    }

    #[test]
    fn reads_certificate_files_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ca.crt"), "CA").unwrap();
        fs::write(dir.path().join("c.crt"), "CERT").unwrap();
        fs::write(dir.path().join("c.key"), "KEY").unwrap();
        let path = dir.path().join("config");
        fs::write(
            &path,
            "apiVersion: v1\nkind: Config\npreferences: {}\nclusters:\n- name: c\n  cluster:\n    server: https://[::1]:7000/\n    certificate-authority: ca.crt\nusers:\n- name: u\n  user:\n    client-certificate: c.crt\n    client-key: c.key\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
        )
        .unwrap();
        let credentials = load_credentials(&path).unwrap();
        assert_eq!(credentials.server, "https://[::1]:7000");
        assert_eq!(credentials.ca_pem, "CA");
        assert_eq!(credentials.client_key_pem, "KEY");
    }
}
