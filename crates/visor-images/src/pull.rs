//! Pulling images from an OCI distribution registry, with Kubernetes' `imagePullPolicy`.
//!
//! The HTTP side — the `/v2/` API, the bearer-token dance, basic auth — is `oci-client`'s. This
//! module decides what to fetch, verifies every digest itself (manifest, config, each layer's
//! compressed and uncompressed digest), picks linux/amd64 out of a multi-arch index, and turns
//! the registry's answers into [`ImageError`] variants that keep the registry's own words.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciImageIndex, OciImageManifest};

use crate::digest::Digest;
use crate::error::{ImageError, Result, error_chain};
use crate::reference::ImageReference;
use crate::store::{ImageConfigFile, ImageStore, ResolvedImage, VerifiedImage};

/// Largest image config accepted; it is held in memory (real ones are a few KiB).
const MAX_CONFIG_BYTES: i64 = 16 << 20;

/// Layers downloaded at once by one pull.
const PARALLEL_LAYER_DOWNLOADS: usize = 3;

const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Layer media types this cache can unpack (compression is sniffed, so all tar variants are
/// equal here).
pub(crate) const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Kubernetes' `imagePullPolicy`. Choosing the default when a pod leaves it unset (`Always`
/// for `:latest` or no tag, else `IfNotPresent`) is the caller's job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry every time; reuse cached layers when the manifest is unchanged.
    Always,
    /// Use the cached image if there is one; pull otherwise.
    IfNotPresent,
    /// Never pull; a missing image is [`ImageError::NeverPull`].
    Never,
}

impl PullPolicy {
    /// Upstream's default for a container that sets no `imagePullPolicy`: `Always` when the
    /// image names no tag or `:latest` (and no digest), `IfNotPresent` otherwise. An image
    /// name that does not parse gets `IfNotPresent`; `ensure` then reports the bad name.
    pub fn default_for(image: &str) -> PullPolicy {
        match ImageReference::parse(image) {
            Ok(reference) if reference.tag() == Some("latest") => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

impl FromStr for PullPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "unknown image pull policy {other:?} (Always, IfNotPresent, Never)"
            )),
        }
    }
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum RegistryAuth {
    /// No credentials; anonymous bearer tokens are still fetched when the registry asks.
    #[default]
    Anonymous,
    /// A user name and password: sent as HTTP basic auth, or traded for a bearer token when
    /// the registry's challenge asks for one.
    Basic { username: String, password: String },
    /// A ready-made bearer token.
    Bearer { token: String },
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            RegistryAuth::Bearer { .. } => f.write_str("Bearer(***)"),
        }
    }
}

impl RegistryAuth {
    /// Picks the credentials for `registry` (as in an image reference, e.g. `docker.io` or
    /// `127.0.0.1:5000`) from a Docker config: the `.dockerconfigjson` of a
    /// `kubernetes.io/dockerconfigjson` Secret (`{"auths": {…}}`) or the older `.dockercfg`
    /// form (the map alone). Keys may carry a scheme and path (`https://index.docker.io/v1/`).
    /// `Ok(None)` when the config has nothing for that registry.
    pub fn from_docker_config(json: &[u8], registry: &str) -> Result<Option<RegistryAuth>> {
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(default)]
            auth: Option<String>,
            #[serde(default)]
            username: Option<String>,
            #[serde(default)]
            password: Option<String>,
            #[serde(default)]
            registrytoken: Option<String>,
        }
        let invalid = |message: String| ImageError::invalid("registry credentials", message);
        let value: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| invalid(format!("docker config is not JSON: {e}")))?;
        let auths = value.get("auths").cloned().unwrap_or(value);
        let entries: BTreeMap<String, Entry> =
            serde_json::from_value(auths).map_err(|e| invalid(format!("docker config: {e}")))?;
        let wanted = canonical_registry_host(registry);
        let Some(entry) = entries
            .into_iter()
            .find(|(key, _)| canonical_registry_host(key) == wanted)
            .map(|(_, entry)| entry)
        else {
            return Ok(None);
        };
        if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
            return Ok(Some(RegistryAuth::Bearer { token }));
        }
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            return Ok(Some(RegistryAuth::Basic {
                username: username.clone(),
                password: password.clone(),
            }));
        }
        if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| invalid(format!("auth for {registry} is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| invalid(format!("auth for {registry} is not UTF-8")))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| invalid(format!("auth for {registry} is not user:password")))?;
            return Ok(Some(RegistryAuth::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        Ok(None)
    }

    fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
            RegistryAuth::Bearer { token } => {
                oci_client::secrets::RegistryAuth::Bearer(token.clone())
            }
        }
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `127.0.0.1:5000/` → `127.0.0.1:5000`.
fn canonical_registry_host(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// True for `localhost`, `127.x.x.x` and `[::1]`, with or without a port.
fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl ImageStore {
    /// Makes `reference` available locally according to `policy` and returns it ready to run.
    ///
    /// Flow: normalise the reference → (unless `Always`) answer from the cache if the image
    /// and all its layers are present → (`Never`: stop with [`ImageError::NeverPull`]) → fetch
    /// the manifest (choosing linux/amd64 from an index) → if that manifest is already cached,
    /// just add the reference → else fetch and verify the config, then download, verify and
    /// unpack the missing layers (three at a time; layers already unpacked for any image are
    /// not downloaded) → record the image under the reference and `repo@manifest-digest`.
    ///
    /// Guarantees: every byte is checked against its digest before it is recorded; a failed
    /// pull records nothing (layers it completed stay on disk and are reused by the next try).
    /// Concurrent ensures of one reference run one after the other, so the second finds the
    /// first's result; concurrent ensures sharing a layer unpack it once.
    ///
    /// Registries on loopback and those in
    /// [`StoreOptions::insecure_registries`](crate::StoreOptions::insecure_registries) are
    /// spoken to over plain HTTP, all others over HTTPS.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        auth: &RegistryAuth,
    ) -> Result<ResolvedImage> {
        let reference = ImageReference::parse(reference)?;
        let _guard = self.lock_key(format!("ref:{reference}")).await;
        if policy != PullPolicy::Always {
            let store = self.clone();
            let lookup = reference.clone();
            if let Some(image) = blocking(move || store.lookup_parsed(&lookup)).await? {
                return Ok(image);
            }
        }
        if policy == PullPolicy::Never {
            return Err(ImageError::NeverPull {
                reference: reference.to_string(),
            });
        }
        self.pull(&reference, auth).await
    }

    async fn pull(&self, reference: &ImageReference, auth: &RegistryAuth) -> Result<ResolvedImage> {
        let client = self.registry_client(reference)?;
        let auth = auth.to_oci();
        let registry_error = |e| registry_error(reference, e);

        let (top_bytes, _) = client
            .pull_manifest_raw(&reference.to_oci(), &auth, MANIFEST_MEDIA_TYPES)
            .await
            .map_err(registry_error)?;
        let top_digest = Digest::of(&top_bytes);
        if let Some(expected) = reference.digest() {
            expected.verify(&top_digest, format_args!("manifest of {reference}"))?;
        }
        let (manifest_bytes, manifest_digest) = match pick_platform(&top_bytes, reference)? {
            None => (top_bytes.to_vec(), top_digest),
            Some(child) => {
                let child_ref = reference.with_digest(&child);
                let (bytes, _) = client
                    .pull_manifest_raw(&child_ref.to_oci(), &auth, MANIFEST_MEDIA_TYPES)
                    .await
                    .map_err(registry_error)?;
                child.verify(&Digest::of(&bytes), format_args!("manifest of {child_ref}"))?;
                (bytes.to_vec(), child)
            }
        };

        let store = self.clone();
        let known_manifest = manifest_digest.clone();
        if let Some(id) = blocking(move || store.image_with_manifest(&known_manifest)).await? {
            let store = self.clone();
            let (reference_owned, manifest) = (reference.clone(), manifest_digest.clone());
            let cached = blocking(move || {
                store.add_reference(&reference_owned, &id, Some(&manifest))?;
                store.lookup_parsed(&reference_owned)
            })
            .await?;
            if let Some(image) = cached {
                return Ok(image);
            }
            // A layer went missing under the cached record: fall through and fetch it again.
        }

        let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
            ImageError::invalid(reference.to_string(), format!("image manifest: {e}"))
        })?;
        let config_digest = Digest::parse(&manifest.config.digest)?;
        if !(0..=MAX_CONFIG_BYTES).contains(&manifest.config.size) {
            return Err(ImageError::invalid(
                reference.to_string(),
                format!(
                    "image config of {} bytes is not plausible",
                    manifest.config.size
                ),
            ));
        }
        let mut config_bytes = Vec::new();
        client
            .pull_blob(
                &reference.to_oci(),
                manifest.config.digest.as_str(),
                &mut config_bytes,
            )
            .await
            .map_err(registry_error)?;
        config_digest.verify(
            &Digest::of(&config_bytes),
            format_args!("config of {reference}"),
        )?;
        let config = ImageConfigFile::parse(&config_bytes, &reference.to_string())?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::invalid(
                reference.to_string(),
                format!(
                    "manifest lists {} layers but the config {}",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        let mut wanted = Vec::new();
        for (descriptor, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            if !LAYER_MEDIA_TYPES.contains(&descriptor.media_type.as_str()) {
                return Err(ImageError::invalid(
                    reference.to_string(),
                    format!(
                        "layer media type {:?} is not a container filesystem layer",
                        descriptor.media_type
                    ),
                ));
            }
            wanted.push((Digest::parse(&descriptor.digest)?, diff_id.clone()));
        }

        let sizes: Vec<u64> = futures::stream::iter(wanted.iter().cloned())
            .map(|(blob, diff_id)| self.fetch_layer(&client, reference, blob, diff_id))
            .buffered(PARALLEL_LAYER_DOWNLOADS)
            .try_collect()
            .await?;

        let verified = VerifiedImage {
            id: config_digest,
            config_bytes,
            manifest: Some((manifest_digest, manifest_bytes)),
            layers: wanted
                .into_iter()
                .map(|(_, diff_id)| diff_id)
                .zip(sizes)
                .collect(),
            run: config.config.unwrap_or_default(),
        };
        let store = self.clone();
        let reference = reference.clone();
        blocking(move || {
            store.record_image(&verified, std::slice::from_ref(&reference))?;
            store.resolved(&reference)
        })
        .await
    }

    /// Downloads and unpacks one layer unless it is already unpacked; returns its size.
    async fn fetch_layer(
        &self,
        client: &Client,
        reference: &ImageReference,
        blob: Digest,
        diff_id: Digest,
    ) -> Result<u64> {
        let _guard = self.lock_key(format!("layer:{diff_id}")).await;
        let store = self.clone();
        let layer = diff_id.clone();
        if self.layer_present(&diff_id) {
            return blocking(move || store.known_layer_size(&layer)).await;
        }
        let download = self.scratch_path("download");
        // Also on cancellation (the caller dropped the future): the file goes either way.
        let _cleanup = RemoveOnDrop(download.clone());
        async {
            let file = tokio::fs::File::create(&download)
                .await
                .map_err(|e| ImageError::io("creating download file", &download, e))?;
            client
                .pull_blob(&reference.to_oci(), blob.as_str(), file)
                .await
                .map_err(|e| registry_error(reference, e))?;
            let path = download.clone();
            let what = format!("layer {blob} of {reference}");
            blocking(move || {
                let file = std::fs::File::open(&path)
                    .map_err(|e| ImageError::io("opening download", &path, e))?;
                store.install_layer(
                    &layer,
                    std::io::BufReader::with_capacity(256 * 1024, file),
                    |actual| blob.verify(actual, &what),
                    &what,
                )
            })
            .await
        }
        .await
    }

    fn registry_client(&self, reference: &ImageReference) -> Result<Client> {
        // reqwest is built without a bundled crypto provider; use the workspace's (ring). An
        // error only means a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = reference.registry();
        let plain_http = is_loopback_registry(registry)
            || self
                .inner
                .options
                .insecure_registries
                .iter()
                .any(|r| r == registry);
        let protocol = if plain_http {
            // oci-client compares against the resolved host (docker.io → index.docker.io).
            let resolved = reference.to_oci().resolve_registry().to_string();
            ClientProtocol::HttpsExcept(vec![resolved])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("visor/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        Client::try_from(config).map_err(|e| registry_error(reference, e))
    }
}

/// Deletes a scratch file when dropped; an unlink is cheap enough for async code.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "could not delete download");
        }
    }
}

/// For an image index, the digest of its linux/amd64 manifest; `None` for a plain manifest.
fn pick_platform(bytes: &[u8], reference: &ImageReference) -> Result<Option<Digest>> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ImageError::invalid(reference.to_string(), format!("manifest is not JSON: {e}"))
    })?;
    if value.get("manifests").is_none() {
        return Ok(None);
    }
    let index: OciImageIndex = serde_json::from_value(value)
        .map_err(|e| ImageError::invalid(reference.to_string(), format!("image index: {e}")))?;
    let mut available = Vec::new();
    for entry in &index.manifests {
        let Some(platform) = &entry.platform else {
            continue;
        };
        let (os, arch) = (platform.os.to_string(), platform.architecture.to_string());
        if os == "linux" && arch == "amd64" {
            return Digest::parse(&entry.digest).map(Some);
        }
        available.push(format!("{os}/{arch}"));
    }
    Err(ImageError::invalid(
        reference.to_string(),
        format!(
            "no linux/amd64 image in the index (it has: {})",
            available.join(", ")
        ),
    ))
}

/// Runs blocking filesystem work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ImageError::io(
            "image cache worker",
            "",
            std::io::Error::other(e.to_string()),
        )
    })?
}

/// The registry's answer as one of our variants, keeping its own code and message.
fn registry_error(reference: &ImageReference, error: OciDistributionError) -> ImageError {
    let reference = reference.to_string();
    match error {
        OciDistributionError::RegistryError { envelope, url } => {
            let code_name = |code: &OciErrorCode| {
                serde_json::to_value(code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{code:?}"))
            };
            let message = envelope
                .errors
                .iter()
                .map(|e| match e.message.is_empty() {
                    true => code_name(&e.code),
                    false => format!("{}: {}", code_name(&e.code), e.message),
                })
                .collect::<Vec<_>>()
                .join("; ");
            let message = if message.is_empty() {
                format!("error from {url}")
            } else {
                message
            };
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::ManifestBlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                ImageError::NotFound { reference, message }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Unauthorized { reference, message }
            } else if codes.contains(&&OciErrorCode::Toomanyrequests) {
                ImageError::Unavailable { reference, message }
            } else {
                ImageError::Registry { reference, message }
            }
        }
        OciDistributionError::ServerError { code, url, message } => {
            let body = message.trim();
            let message = match body.is_empty() {
                true => format!("HTTP {code} from {url}"),
                false => format!("HTTP {code}: {}", truncate(body, 300)),
            };
            match code {
                404 => ImageError::NotFound { reference, message },
                401 | 403 => ImageError::Unauthorized { reference, message },
                408 | 429 | 500..=599 => ImageError::Unavailable { reference, message },
                _ => ImageError::Registry { reference, message },
            }
        }
        OciDistributionError::UnauthorizedError { url } => ImageError::Unauthorized {
            reference,
            message: format!("HTTP 401 from {url}"),
        },
        OciDistributionError::AuthenticationFailure(message) => ImageError::Unauthorized {
            reference,
            message: format!("token request refused: {}", truncate(message.trim(), 300)),
        },
        OciDistributionError::ImageManifestNotFoundError(message) => {
            ImageError::NotFound { reference, message }
        }
        OciDistributionError::RequestError(e) => ImageError::Unavailable {
            reference,
            message: error_chain(&e),
        },
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => ImageError::DigestMismatch {
            what: format!("content of {reference}"),
            expected,
            actual,
        },
        OciDistributionError::IoError(e) => ImageError::io("writing download", reference, e),
        other => ImageError::Registry {
            reference,
            message: other.to_string(),
        },
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let json = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"127.0.0.1:5000":{{"username":"bob","password":"pw"}}}}}}"#
        );
        assert_eq!(
            RegistryAuth::from_docker_config(json.as_bytes(), "docker.io").unwrap(),
            Some(RegistryAuth::Basic {
                username: "alice".into(),
                password: "s3cret".into()
            })
        );
        assert_eq!(
            RegistryAuth::from_docker_config(json.as_bytes(), "127.0.0.1:5000").unwrap(),
            Some(RegistryAuth::Basic {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            RegistryAuth::from_docker_config(json.as_bytes(), "quay.io").unwrap(),
            None
        );
        assert!(RegistryAuth::from_docker_config(b"not json", "quay.io").is_err());
    }

    #[test]
    fn loopback_registries_are_recognised() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback_registry(yes), "{yes}");
        }
        for no in ["docker.io", "10.0.0.1:5000", "registry.local"] {
            assert!(!is_loopback_registry(no), "{no}");
        }
    }

    #[test]
    fn pull_policy_parses_kubernetes_spelling() {
        assert_eq!(
            "IfNotPresent".parse::<PullPolicy>().unwrap(),
            PullPolicy::IfNotPresent
        );
        assert!("ifnotpresent".parse::<PullPolicy>().is_err());
        assert_eq!(PullPolicy::default_for("busybox"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::default_for("busybox:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::default_for("busybox:1.36"),
            PullPolicy::IfNotPresent
        );
        let digest = Digest::of(b"x");
        assert_eq!(
            PullPolicy::default_for(&format!("busybox@{digest}")),
            PullPolicy::IfNotPresent
        );
    }
}
