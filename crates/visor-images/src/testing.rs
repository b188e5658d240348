//! Test fixtures shared with other crates' end-to-end tests (feature `testing`): a busybox
//! image built at test time from the host's static busybox, and a small OCI distribution
//! registry served in-process on 127.0.0.1.
//!
//! Nothing here downloads anything. The image is Debian's `/usr/bin/busybox` (package
//! `busybox-static`) with applet symlinks, in two layers so whiteouts are exercised:
//!
//! - base layer (tar+gzip, identical for every variant, so variants share it): `bin/busybox`
//!   and its applets, `etc/passwd`, `etc/group`, `tmp` (1777), `etc/doomed`,
//!   `var/cache/old/stale.txt`, `usr/share/hello.txt` plus a hard link to it
//!   `usr/share/hello-link.txt`, `home/user` owned by 1000:1000;
//! - upper layer (plain tar): a whiteout `etc/.wh.doomed`, an opaque marker
//!   `var/cache/.wh..wh..opq` with a new `var/cache/fresh.txt`, and `etc/visor-variant`
//!   holding the variant string.
//!
//! The image's config: `Cmd ["sh"]`, `Env [PATH=…]`, `WorkingDir /` unless overridden.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use crate::digest::Digest;
use crate::reference::ImageReference;

/// Where the static busybox lives on Debian (`apt-get install busybox-static`).
pub const HOST_BUSYBOX: &str = "/usr/bin/busybox";

/// Applets linked in `bin/`: enough for shells, probes, servers and clients in tests.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ash", "echo", "sleep", "cat", "httpd", "nc", "ls", "env", "true", "false", "wget", "id",
    "hostname", "mkdir", "rm", "touch", "ps", "kill", "grep", "head", "tail", "date", "yes", "dd",
    "printf", "test", "[", "ip", "ifconfig", "ping", "sed", "awk", "wc", "tee", "cp", "mv", "ln",
    "chmod", "stat", "uname", "whoami", "pwd", "seq", "sort", "timeout", "nslookup", "mount", "df",
    "du", "free", "top", "xargs", "vi", "tr", "cut", "find", "basename", "dirname", "readlink",
];

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Fixed mtime for every entry, so the same inputs give the same digests.
const MTIME: u64 = 1_700_000_000;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// What to vary between test images.
#[derive(Clone, Debug)]
pub struct BusyboxImageOptions {
    /// Written to `/etc/visor-variant` in the upper layer; different variants are different
    /// images sharing the base layer.
    pub variant: String,
    /// The config's `Cmd`.
    pub cmd: Vec<String>,
    /// The config's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// Extra `Env` entries after `PATH`.
    pub env: Vec<String>,
}

impl Default for BusyboxImageOptions {
    fn default() -> Self {
        BusyboxImageOptions {
            variant: "default".to_string(),
            cmd: vec!["sh".to_string()],
            entrypoint: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A test image on disk in three forms, with its digests.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// The normalised reference written into the archives.
    pub reference: String,
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`).
    pub oci_layout_dir: PathBuf,
    /// The same layout as a tar file.
    pub oci_archive: PathBuf,
    /// A `docker save` archive (`manifest.json`, `<id>.json`, `<layer>/layer.tar`).
    pub docker_archive: PathBuf,
    /// The same `docker save` archive, gzip-compressed as a whole.
    pub docker_archive_gz: PathBuf,
    /// The image ID (config digest).
    pub id: Digest,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// Compressed layer blob digests, lowest first.
    pub layer_digests: Vec<Digest>,
    /// Uncompressed layer digests, lowest first.
    pub diff_ids: Vec<Digest>,
}

impl TestImage {
    /// The bytes of a blob of the OCI layout (manifest, config or layer).
    pub fn blob(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let path = self.oci_layout_dir.join("blobs/sha256").join(digest.hex());
        fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Builds the busybox test image for `reference` in `dir` with default options.
pub fn build_busybox_image(dir: &Path, reference: &str) -> anyhow::Result<TestImage> {
    build_busybox_image_with(dir, reference, &BusyboxImageOptions::default())
}

/// Builds the busybox test image for `reference` in `dir` (created if missing): an OCI layout
/// directory and archive and a `docker save` archive (plain and gzipped). Deterministic: the
/// same options give the same digests, and the base layer is the same for all options.
/// Fails when `/usr/bin/busybox` is missing.
pub fn build_busybox_image_with(
    dir: &Path,
    reference: &str,
    options: &BusyboxImageOptions,
) -> anyhow::Result<TestImage> {
    let normalised = ImageReference::parse(reference)?.to_string();
    let busybox = fs::read(HOST_BUSYBOX)
        .with_context(|| format!("reading {HOST_BUSYBOX} (install the busybox-static package)"))?;
    fs::create_dir_all(dir)?;

    let base_tar = base_layer(&busybox)?;
    let upper_tar = upper_layer(&options.variant)?;
    let base_gz = gzip(&base_tar)?;
    let diff_ids = vec![Digest::of(&base_tar), Digest::of(&upper_tar)];
    let layer_blobs: Vec<(&str, Vec<u8>)> = vec![
        (OCI_LAYER_GZIP, base_gz),
        (OCI_LAYER_TAR, upper_tar.clone()),
    ];
    let layer_digests: Vec<Digest> = layer_blobs.iter().map(|(_, b)| Digest::of(b)).collect();

    let mut env = vec![PATH_ENV.to_string()];
    env.extend(options.env.iter().cloned());
    let mut run = json!({ "Env": env, "Cmd": options.cmd, "WorkingDir": "/" });
    if !options.entrypoint.is_empty() {
        run["Entrypoint"] = json!(options.entrypoint);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": run,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [
            { "created_by": "visor test image: busybox base" },
            { "created_by": format!("visor test image: variant {}", options.variant) },
        ],
    }))?;
    let config_digest = Digest::of(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layer_blobs.iter().zip(&layer_digests).map(|((media_type, bytes), digest)| json!({
            "mediaType": media_type, "digest": digest, "size": bytes.len(),
        })).collect::<Vec<_>>(),
    }))?;
    let manifest_digest = Digest::of(&manifest);

    // OCI layout directory.
    let layout = dir.join("oci-layout-dir");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": normalised },
        }],
    }))?;
    fs::write(layout.join("index.json"), &index)?;
    let mut blob_files: Vec<(Digest, Vec<u8>)> = vec![
        (manifest_digest.clone(), manifest.clone()),
        (config_digest.clone(), config.clone()),
    ];
    for ((_, bytes), digest) in layer_blobs.iter().zip(&layer_digests) {
        blob_files.push((digest.clone(), bytes.clone()));
    }
    for (digest, bytes) in &blob_files {
        fs::write(blobs.join(digest.hex()), bytes)?;
    }

    // OCI layout archive.
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
    ];
    for (digest, bytes) in &blob_files {
        files.push((format!("blobs/sha256/{}", digest.hex()), bytes.clone()));
    }
    let oci_archive = dir.join("image-oci.tar");
    fs::write(&oci_archive, plain_archive(&files)?)?;

    // docker save archive, the classic layout: uncompressed layer.tar per layer directory.
    let layer_dirs: Vec<String> = diff_ids.iter().map(|d| d.hex().to_string()).collect();
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": format!("{}.json", config_digest.hex()),
        "RepoTags": [reference],
        "Layers": layer_dirs.iter().map(|d| format!("{d}/layer.tar")).collect::<Vec<_>>(),
    }]))?;
    let files = vec![
        ("manifest.json".to_string(), docker_manifest),
        (format!("{}.json", config_digest.hex()), config.clone()),
        (format!("{}/layer.tar", layer_dirs[0]), base_tar),
        (format!("{}/layer.tar", layer_dirs[1]), upper_tar),
    ];
    let docker_tar = plain_archive(&files)?;
    let docker_archive = dir.join("image-docker.tar");
    fs::write(&docker_archive, &docker_tar)?;
    let docker_archive_gz = dir.join("image-docker.tar.gz");
    fs::write(&docker_archive_gz, gzip(&docker_tar)?)?;

    Ok(TestImage {
        reference: normalised,
        oci_layout_dir: layout,
        oci_archive,
        docker_archive,
        docker_archive_gz,
        id: config_digest.clone(),
        manifest_digest,
        config_digest,
        layer_digests,
        diff_ids,
    })
}

/// A tar stream under construction with fixed metadata.
struct LayerBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl LayerBuilder {
    fn new() -> Self {
        LayerBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(MTIME);
        header.set_size(0);
        header
    }

    fn dir(&mut self, path: &str, mode: u32) -> anyhow::Result<()> {
        self.dir_owned(path, mode, 0, 0)
    }

    fn dir_owned(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> anyhow::Result<()> {
        let mut header = Self::header(tar::EntryType::Directory, mode, uid, gid);
        self.builder
            .append_data(&mut header, path, std::io::empty())?;
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        self.file_owned(path, mode, 0, 0, data)
    }

    fn file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &[u8],
    ) -> anyhow::Result<()> {
        let mut header = Self::header(tar::EntryType::Regular, mode, uid, gid);
        header.set_size(data.len() as u64);
        self.builder.append_data(&mut header, path, data)?;
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.builder.append_link(&mut header, path, target)?;
        Ok(())
    }

    fn hardlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        let mut header = Self::header(tar::EntryType::Link, 0o644, 0, 0);
        self.builder.append_link(&mut header, path, target)?;
        Ok(())
    }

    fn finish(self) -> anyhow::Result<Vec<u8>> {
        Ok(self.builder.into_inner()?)
    }
}

fn base_layer(busybox: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut layer = LayerBuilder::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("var", 0o755),
        ("var/cache", 0o755),
        ("var/cache/old", 0o755),
        ("usr", 0o755),
        ("usr/share", 0o755),
        ("home", 0o755),
    ] {
        layer.dir(dir, mode)?;
    }
    layer.dir_owned("home/user", 0o750, 1000, 1000)?;
    layer.file_owned(
        "home/user/.profile",
        0o640,
        1000,
        1000,
        b"export PS1='$ '\n",
    )?;
    layer.file("bin/busybox", 0o755, busybox)?;
    for applet in BUSYBOX_APPLETS {
        layer.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    layer.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    layer.file(
        "etc/group",
        0o644,
        b"root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
    )?;
    layer.file(
        "etc/doomed",
        0o644,
        b"deleted by the upper layer's whiteout\n",
    )?;
    layer.file(
        "var/cache/old/stale.txt",
        0o644,
        b"hidden by the upper layer's opaque directory\n",
    )?;
    layer.file(
        "usr/share/hello.txt",
        0o644,
        b"hello from the visor test image\n",
    )?;
    layer.hardlink("usr/share/hello-link.txt", "usr/share/hello.txt")?;
    layer.finish()
}

fn upper_layer(variant: &str) -> anyhow::Result<Vec<u8>> {
    let mut layer = LayerBuilder::new();
    layer.dir("etc", 0o755)?;
    layer.file("etc/.wh.doomed", 0o644, b"")?;
    layer.file(
        "etc/visor-variant",
        0o644,
        format!("{variant}\n").as_bytes(),
    )?;
    layer.dir("var", 0o755)?;
    layer.dir("var/cache", 0o755)?;
    layer.file("var/cache/.wh..wh..opq", 0o644, b"")?;
    layer.file(
        "var/cache/fresh.txt",
        0o644,
        b"written by the upper layer\n",
    )?;
    layer.finish()
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    // GzBuilder writes mtime 0 and no file name: the output depends on the input only.
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// A tar of regular files (directories implied), for the outer image archives.
fn plain_archive(files: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let mut archive = LayerBuilder::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (path, data) in files {
        let mut parent = Path::new(path).parent();
        let mut missing = Vec::new();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if dirs.insert(dir.to_path_buf()) {
                missing.push(dir.to_path_buf());
            }
            parent = dir.parent();
        }
        for dir in missing.iter().rev() {
            archive.dir(&dir.to_string_lossy(), 0o755)?;
        }
        archive.file(path, 0o644, data)?;
    }
    archive.finish()
}

// ---------------------------------------------------------------------------------------------
// The test registry.
// ---------------------------------------------------------------------------------------------

/// A minimal OCI distribution registry on 127.0.0.1 (read side only): `/v2/`, manifests by tag
/// and digest (GET and HEAD), blobs, spec-shaped JSON errors (`MANIFEST_UNKNOWN`,
/// `BLOB_UNKNOWN`, `UNAUTHORIZED`) and, when started with credentials, the bearer-token flow
/// (`WWW-Authenticate: Bearer realm=…/token`, basic auth at the token endpoint).
///
/// Start it inside a tokio runtime; it stops when dropped. It counts requests so tests can
/// assert the network was not used.
pub struct TestRegistry {
    addr: SocketAddr,
    state: Arc<RegistryState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct RegistryState {
    /// (repository, tag) → manifest digest.
    tags: Mutex<HashMap<(String, String), Digest>>,
    /// manifest digest → (media type, bytes).
    manifests: Mutex<HashMap<Digest, (String, Vec<u8>)>>,
    blobs: Mutex<HashMap<Digest, Vec<u8>>>,
    requests: AtomicUsize,
    credentials: Option<(String, String)>,
    token: String,
    realm: String,
}

impl TestRegistry {
    /// Starts an anonymous registry on a free loopback port.
    pub async fn start() -> anyhow::Result<TestRegistry> {
        TestRegistry::start_inner(None).await
    }

    /// Starts a registry that demands a bearer token, which its `/token` endpoint issues for
    /// these basic-auth credentials only.
    pub async fn start_with_auth(username: &str, password: &str) -> anyhow::Result<TestRegistry> {
        TestRegistry::start_inner(Some((username.to_string(), password.to_string()))).await
    }

    async fn start_inner(credentials: Option<(String, String)>) -> anyhow::Result<TestRegistry> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(RegistryState {
            credentials,
            token: format!("visor-test-token-{}", addr.port()),
            realm: format!("http://{addr}/token"),
            ..RegistryState::default()
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "test registry stopped with an error");
            }
        });
        Ok(TestRegistry {
            addr,
            state,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// `127.0.0.1:PORT`, the registry part of references to it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `127.0.0.1:PORT/{repository_and_tag}`.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.host())
    }

    /// Requests served so far (any path, any answer).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Publishes `image` as `repository:tag`; returns the manifest digest.
    pub fn push_image(
        &self,
        repository: &str,
        tag: &str,
        image: &TestImage,
    ) -> anyhow::Result<Digest> {
        let mut blobs = self.state.blobs.lock().unwrap_or_else(|p| p.into_inner());
        for digest in std::iter::once(&image.config_digest).chain(&image.layer_digests) {
            blobs.insert(digest.clone(), image.blob(digest)?);
        }
        drop(blobs);
        let manifest = image.blob(&image.manifest_digest)?;
        self.put_manifest(repository, Some(tag), OCI_MANIFEST, manifest)
    }

    /// Publishes `image` behind a multi-arch index (linux/arm64 listed first, pointing at a
    /// manifest the registry does not have, then linux/amd64) as `repository:tag`; returns the
    /// index digest.
    pub fn push_multi_arch(
        &self,
        repository: &str,
        tag: &str,
        image: &TestImage,
    ) -> anyhow::Result<Digest> {
        self.push_image(repository, &format!("{tag}-amd64"), image)?;
        let manifest_len = image.blob(&image.manifest_digest)?.len();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                { "mediaType": OCI_MANIFEST, "digest": Digest::of(b"no arm64 image here"), "size": 19,
                  "platform": { "architecture": "arm64", "os": "linux" } },
                { "mediaType": OCI_MANIFEST, "digest": image.manifest_digest, "size": manifest_len,
                  "platform": { "architecture": "amd64", "os": "linux" } },
            ],
        }))?;
        self.put_manifest(repository, Some(tag), OCI_INDEX, index)
    }

    /// Stores a manifest (any media type) under its digest and, if given, a tag.
    pub fn put_manifest(
        &self,
        repository: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<Digest> {
        let digest = Digest::of(&bytes);
        self.state
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), (media_type.to_string(), bytes));
        if let Some(tag) = tag {
            self.state
                .tags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((repository.to_string(), tag.to_string()), digest.clone());
        }
        Ok(digest)
    }

    /// Replaces a blob's content with different bytes of the same length, so pulls of it fail
    /// digest verification.
    pub fn corrupt_blob(&self, digest: &Digest) -> anyhow::Result<()> {
        let mut blobs = self.state.blobs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bytes) = blobs.get_mut(digest) else {
            bail!("registry has no blob {digest}");
        };
        let Some(last) = bytes.last_mut() else {
            bail!("blob {digest} is empty");
        };
        *last ^= 0xff;
        Ok(())
    }

    /// Removes a tag (so pulls of it get `MANIFEST_UNKNOWN`).
    pub fn delete_tag(&self, repository: &str, tag: &str) {
        self.state
            .tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(repository.to_string(), tag.to_string()));
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
    }
}

/// A 200 carrying `bytes` (headers only for HEAD), with the digest header registries send for
/// manifests when `digest` is given.
fn content_response(
    method: &Method,
    media_type: &str,
    bytes: Vec<u8>,
    digest: Option<&Digest>,
) -> Response {
    let length = bytes.len();
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, length);
    if let Some(digest) = digest {
        response = response.header("Docker-Content-Digest", digest.as_str());
    }
    response
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn oci_error(status: StatusCode, code: &str, message: &str, detail: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(
            &json!({ "errors": [{ "code": code, "message": message, "detail": detail }] }),
        )
        .unwrap_or_default(),
    )
        .into_response()
}

async fn handle(
    State(state): State<Arc<RegistryState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let path = uri.path();
    if path == "/token" {
        return issue_token(&state, &headers);
    }
    let Some(rest) = path.strip_prefix("/v2") else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found", json!(path));
    };
    if state.credentials.is_some() {
        let expected = format!("Bearer {}", state.token);
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if presented != Some(expected.as_str()) {
            let realm = &state.realm;
            let mut response = oci_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
                json!(null),
            );
            if let Ok(value) =
                format!(r#"Bearer realm="{realm}",service="visor-test-registry""#).parse()
            {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
            return response;
        }
    }
    if rest.is_empty() || rest == "/" {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response();
    }
    let rest = rest.trim_start_matches('/');
    if let Some(at) = rest.rfind("/manifests/") {
        let (repository, reference) = (&rest[..at], &rest[at + "/manifests/".len()..]);
        let digest = match Digest::parse(reference) {
            Ok(digest) => Some(digest),
            Err(_) => state
                .tags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(repository.to_string(), reference.to_string()))
                .cloned(),
        };
        let found = digest.and_then(|d| {
            state
                .manifests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&d)
                .cloned()
                .map(|m| (d, m))
        });
        let Some((digest, (media_type, bytes))) = found else {
            return oci_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
                json!({ "Name": repository, "Revision": reference }),
            );
        };
        return content_response(&method, &media_type, bytes, Some(&digest));
    }
    if let Some(at) = rest.rfind("/blobs/") {
        let reference = &rest[at + "/blobs/".len()..];
        let blob = Digest::parse(reference).ok().and_then(|d| {
            state
                .blobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&d)
                .cloned()
        });
        let Some(bytes) = blob else {
            return oci_error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
                json!(reference),
            );
        };
        return content_response(&method, "application/octet-stream", bytes, None);
    }
    oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found", json!(path))
}

fn issue_token(state: &RegistryState, headers: &HeaderMap) -> Response {
    let Some((username, password)) = &state.credentials else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "this registry issues no tokens",
            json!(null),
        );
    };
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    );
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if presented != Some(expected.as_str()) {
        return oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "invalid username or password",
            json!(null),
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(
            &json!({ "token": state.token, "access_token": state.token, "expires_in": 300 }),
        )
        .unwrap_or_default(),
    )
        .into_response()
}
