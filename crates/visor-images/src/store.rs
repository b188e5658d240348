//! The on-disk image cache: layout, index, and the operations over them.
//!
//! ```text
//! DIR/index.json              references → image ID, image ID → config, layers, sizes (JSON)
//! DIR/index.lock              taken (flock) around every read-modify-write of index.json
//! DIR/blobs/sha256/<hex>      manifests and configs, named by their digest
//! DIR/layers/sha256/<hex>     unpacked layers, named by their diff ID (uncompressed digest)
//! DIR/tmp/<pid>-<n>-<what>    scratch space on the same filesystem, renamed into place
//! ```
//!
//! Guarantees:
//! - A directory under `layers/sha256/` is complete: it is unpacked under `tmp/`, its
//!   filesystem synced, then renamed into place in one step. Removal renames it back to `tmp/`
//!   first. A crash leaves at most scratch directories, which the next `open` deletes once the
//!   process that made them is gone.
//! - Two unpacks of one layer, in one process or several, never mix: the loser of the rename
//!   discards its copy. Within a process, ensures of one reference and unpacks of one layer are
//!   serialised so the work is done once.
//! - Nothing is recorded in the index until every digest has been checked and every layer is
//!   in place; `index.json` is replaced atomically (write, fsync, rename) under a file lock, so
//!   `visor image import` can run while the agent pulls.
//!
//! Layer tarballs are not kept once unpacked: the unpacked tree is what the runtime needs, and
//! keeping both would double the disk cost of every image.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::reference::ImageReference;
use crate::unpack::{UnpackedLayer, unpack_layer};

/// Options for [`ImageStore::open_with`].
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Registries (`host` or `host:port`, as written in image references) reached over plain
    /// HTTP. Registries on loopback (`localhost`, `127.x.x.x`, `[::1]`) always are.
    pub insecure_registries: Vec<String>,
}

/// The per-host image cache. Cheap to clone; clones share locks.
#[derive(Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) options: StoreOptions,
    /// Serialises index updates within the process; `index.lock` does it across processes.
    index_mutex: Mutex<()>,
    /// Per-key async locks (`ref:…`, `layer:…`) so concurrent ensures share one download.
    keyed: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    scratch_counter: AtomicU64,
}

/// An image ready to run: what the runtime needs to build a root filesystem and a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `sha256:` digest of the image config (Docker's and the CRI's image ID).
    pub id: Digest,
    /// The normalised reference it was asked for, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// `repo@sha256:…` of the manifest when known (pulled or imported from an OCI layout);
    /// upstream shows it as the container status's `imageID`.
    pub repo_digest: Option<String>,
    /// Unpacked layer directories, lowest first: overlayfs wants them reversed in `lowerdir=`.
    pub layers: Vec<PathBuf>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Bytes of file content in the unpacked layers.
    pub size: u64,
}

/// One cached image, as `visor image list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    pub id: Digest,
    /// Tag references, sorted; empty for an image whose tags all moved elsewhere.
    pub references: Vec<String>,
    /// Digest references (`repo@sha256:…`), sorted.
    pub repo_digests: Vec<String>,
    pub size: u64,
}

/// Disk use of the cache, for ephemeral-storage accounting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub images: usize,
    pub layers: usize,
    /// File content bytes of all unpacked layers (shared layers counted once).
    pub layer_bytes: u64,
    /// Bytes of manifests and configs.
    pub blob_bytes: u64,
}

impl Usage {
    pub fn total_bytes(&self) -> u64 {
        self.layer_bytes + self.blob_bytes
    }
}

/// The run configuration part of an image config (`config` in the JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The parts of an OCI / Docker image config the cache needs.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ImageConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct RootFs {
    pub diff_ids: Vec<Digest>,
}

impl ImageConfigFile {
    pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<ImageConfigFile> {
        let config: ImageConfigFile = serde_json::from_slice(bytes)
            .map_err(|e| ImageError::invalid(what, format!("image config: {e}")))?;
        if !config.os.is_empty() && config.os != "linux" {
            return Err(ImageError::invalid(
                what,
                format!("image is for {}, not linux", config.os),
            ));
        }
        if !config.architecture.is_empty() && config.architecture != "amd64" {
            return Err(ImageError::invalid(
                what,
                format!("image is for {}, not amd64", config.architecture),
            ));
        }
        Ok(config)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Index {
    /// Normalised reference → image ID.
    references: BTreeMap<String, Digest>,
    /// Image ID → what it is made of.
    images: BTreeMap<Digest, ImageRecord>,
    /// Diff ID → unpacked size.
    layers: BTreeMap<Digest, LayerRecord>,
}

impl Index {
    /// The unpacked size of an image: the sum of its layers' sizes (a layer the index does not
    /// know counts nothing).
    fn unpacked_size(&self, image: &ImageRecord) -> u64 {
        image
            .layers
            .iter()
            .filter_map(|d| self.layers.get(d))
            .map(|l| l.size)
            .sum()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ImageRecord {
    /// Manifests known to describe this image (their blobs are kept).
    manifests: BTreeSet<Digest>,
    /// Diff IDs, lowest layer first.
    layers: Vec<Digest>,
    run: RunConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LayerRecord {
    size: u64,
}

/// A fully verified image, ready to be written to the index.
pub(crate) struct VerifiedImage {
    pub id: Digest,
    pub config_bytes: Vec<u8>,
    pub manifest: Option<(Digest, Vec<u8>)>,
    pub layers: Vec<(Digest, u64)>,
    pub run: RunConfig,
}

impl ImageStore {
    /// Opens (creating if needed) the cache in `dir` with default options.
    pub fn open(dir: &Path) -> Result<ImageStore> {
        ImageStore::open_with(dir, StoreOptions::default())
    }

    /// Opens (creating if needed) the cache in `dir`. Scratch directories left by processes
    /// that no longer run are deleted.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<ImageStore> {
        // Layer paths are handed to mount(2) as overlay lower directories: keep them absolute.
        let dir = &std::path::absolute(dir)
            .map_err(|e| ImageError::io("resolving cache directory", dir, e))?;
        for sub in ["blobs/sha256", "layers/sha256", "tmp"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path)
                .map_err(|e| ImageError::io("creating cache directory", &path, e))?;
        }
        let store = ImageStore {
            inner: Arc::new(Inner {
                root: dir.to_path_buf(),
                options,
                index_mutex: Mutex::new(()),
                keyed: Mutex::new(HashMap::new()),
                scratch_counter: AtomicU64::new(0),
            }),
        };
        store.clean_stale_scratch();
        Ok(store)
    }

    /// The directory the cache lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Looks `reference` up in the cache without touching the network. `Ok(None)` when it is
    /// not cached or one of its layers has gone missing.
    pub fn lookup(&self, reference: &str) -> Result<Option<ResolvedImage>> {
        let reference = ImageReference::parse(reference)?;
        self.lookup_parsed(&reference)
    }

    pub(crate) fn lookup_parsed(
        &self,
        reference: &ImageReference,
    ) -> Result<Option<ResolvedImage>> {
        let index = self.read_index()?;
        let key = reference.to_string();
        let Some(id) = index.references.get(&key) else {
            return Ok(None);
        };
        self.resolved_from_index(&index, id, key)
    }

    /// Finds a cached image by manifest digest (after a registry resolved a tag to it).
    pub(crate) fn image_with_manifest(&self, manifest: &Digest) -> Result<Option<Digest>> {
        let index = self.read_index()?;
        Ok(index
            .images
            .iter()
            .find(|(_, record)| record.manifests.contains(manifest))
            .map(|(id, _)| id.clone()))
    }

    fn resolved_from_index(
        &self,
        index: &Index,
        id: &Digest,
        reference: String,
    ) -> Result<Option<ResolvedImage>> {
        let Some(record) = index.images.get(id) else {
            return Ok(None);
        };
        let layers: Vec<PathBuf> = record.layers.iter().map(|d| self.layer_path(d)).collect();
        if !layers.iter().all(|p| p.is_dir()) {
            return Ok(None);
        }
        let parsed = ImageReference::parse(&reference)?;
        let repo_digest = match parsed.digest() {
            Some(_) => Some(reference.clone()),
            None => record
                .manifests
                .iter()
                .map(|m| parsed.with_digest(m).to_string())
                .find(|r| index.references.get(r) == Some(id)),
        };
        let run = record.run.clone();
        Ok(Some(ResolvedImage {
            id: id.clone(),
            reference,
            repo_digest,
            layers,
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
            size: index.unpacked_size(record),
        }))
    }

    /// Every cached image with its references and size, sorted by first reference.
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        let index = self.read_index()?;
        let mut summaries: Vec<ImageSummary> = index
            .images
            .iter()
            .map(|(id, record)| {
                let (mut references, mut repo_digests) = (Vec::new(), Vec::new());
                for (reference, target) in &index.references {
                    if target == id {
                        if reference.contains('@') {
                            repo_digests.push(reference.clone());
                        } else {
                            references.push(reference.clone());
                        }
                    }
                }
                references.sort();
                repo_digests.sort();
                ImageSummary {
                    id: id.clone(),
                    references,
                    repo_digests,
                    size: index.unpacked_size(record),
                }
            })
            .collect();
        summaries.sort_by(|a, b| {
            let first = |s: &ImageSummary| s.references.first().or(s.repo_digests.first()).cloned();
            first(a).cmp(&first(b)).then_with(|| a.id.cmp(&b.id))
        });
        Ok(summaries)
    }

    /// Disk use of the cache. Layer sizes come from the index (file content bytes); blob sizes
    /// from the filesystem.
    pub fn usage(&self) -> Result<Usage> {
        let index = self.read_index()?;
        let blobs = self.inner.root.join("blobs/sha256");
        let mut blob_bytes = 0;
        for entry in fs::read_dir(&blobs).map_err(|e| ImageError::io("listing blobs", &blobs, e))? {
            let entry = entry.map_err(|e| ImageError::io("listing blobs", &blobs, e))?;
            blob_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(Usage {
            images: index.images.len(),
            layers: index.layers.len(),
            layer_bytes: index.layers.values().map(|l| l.size).sum(),
            blob_bytes,
        })
    }

    /// Removes `reference` (a reference, or a full `sha256:` image ID) from the cache.
    ///
    /// Flow: the reference is dropped; when no tag reference to its image remains (or an image
    /// ID was given), the image goes with all its references, and then its manifests, config and
    /// every layer no other image uses. Returns the removed image's ID when the image itself went.
    ///
    /// Caveat: the caller must not remove an image whose layers a running container still
    /// mounts; the cache does not know which containers exist.
    pub fn remove(&self, reference: &str) -> Result<Option<Digest>> {
        let by_id = Digest::parse(reference).ok();
        let key = match &by_id {
            Some(_) => None,
            None => Some(ImageReference::parse(reference)?.to_string()),
        };
        let removed = self.update_index(|index| {
            let id = match (&by_id, &key) {
                (Some(id), _) if index.images.contains_key(id) => id.clone(),
                (_, Some(key)) => match index.references.remove(key) {
                    Some(id) => id,
                    None => {
                        return Err(ImageError::NotCached {
                            reference: reference.to_string(),
                        });
                    }
                },
                _ => {
                    return Err(ImageError::NotCached {
                        reference: reference.to_string(),
                    });
                }
            };
            let tags_left = index
                .references
                .iter()
                .any(|(r, target)| target == &id && !r.contains('@'));
            if tags_left && by_id.is_none() {
                return Ok(None);
            }
            index.references.retain(|_, target| target != &id);
            let Some(record) = index.images.remove(&id) else {
                return Ok(None);
            };
            let still_used: BTreeSet<&Digest> = index
                .images
                .values()
                .flat_map(|r| r.layers.iter())
                .collect();
            let orphan_layers: Vec<Digest> = record
                .layers
                .iter()
                .filter(|d| !still_used.contains(d))
                .cloned()
                .collect();
            for layer in &orphan_layers {
                index.layers.remove(layer);
            }
            // A manifest names exactly one config, so this image's manifests are its own.
            let mut orphan_blobs: Vec<Digest> = vec![id.clone()];
            orphan_blobs.extend(record.manifests.iter().cloned());
            Ok(Some((id, orphan_blobs, orphan_layers)))
        })?;
        let Some((id, blobs, layers)) = removed else {
            return Ok(None);
        };
        for blob in blobs {
            let path = self.blob_path(&blob);
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(ImageError::io("removing blob", &path, e));
            }
        }
        for layer in layers {
            self.remove_layer_dir(&layer)?;
        }
        Ok(Some(id))
    }

    // ----- building blocks shared by import and pull -----

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.root.join("blobs/sha256").join(digest.hex())
    }

    pub(crate) fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.inner.root.join("layers/sha256").join(diff_id.hex())
    }

    pub(crate) fn layer_present(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    /// A fresh scratch path under `tmp/` (not created), named after this process so `open`
    /// can tell abandoned ones from live ones.
    pub(crate) fn scratch_path(&self, what: &str) -> PathBuf {
        let n = self.inner.scratch_counter.fetch_add(1, Ordering::Relaxed);
        self.inner
            .root
            .join("tmp")
            .join(format!("{}-{n}-{what}", std::process::id()))
    }

    /// A fresh, empty scratch directory.
    pub(crate) fn scratch_dir(&self, what: &str) -> Result<PathBuf> {
        let path = self.scratch_path(what);
        if path.exists() {
            // A stale leftover of an earlier process with the same PID.
            fs::remove_dir_all(&path)
                .map_err(|e| ImageError::io("clearing scratch directory", &path, e))?;
        }
        fs::create_dir(&path)
            .map_err(|e| ImageError::io("creating scratch directory", &path, e))?;
        Ok(path)
    }

    fn clean_stale_scratch(&self) {
        let tmp = self.inner.root.join("tmp");
        let Ok(entries) = fs::read_dir(&tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<i32>().ok());
            let alive = pid
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|pid| {
                    rustix::process::test_kill_process(pid).is_ok()
                        || pid.as_raw_nonzero().get() == std::process::id() as i32
                });
            if !alive {
                let path = entry.path();
                let result = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                if let Err(e) = result {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete abandoned scratch entry");
                }
            }
        }
    }

    /// Unpacks a layer blob (read from `blob`) unless the layer is already present, verifying
    /// its diff ID. Blocking; call from a blocking context. Returns the layer's size.
    ///
    /// `verify_blob` is called after the whole blob has been read, with the blob's digest, so
    /// the caller can check the compressed digest it expected.
    pub(crate) fn install_layer(
        &self,
        diff_id: &Digest,
        blob: impl io::Read,
        verify_blob: impl FnOnce(&Digest) -> Result<()>,
        what: &str,
    ) -> Result<u64> {
        if self.layer_present(diff_id) {
            return self.known_layer_size(diff_id);
        }
        let scratch = self.scratch_dir("layer")?;
        let result = (|| {
            let mut hashing = crate::digest::HashingReader::new(blob);
            let UnpackedLayer {
                diff_id: actual,
                size,
            } = unpack_layer(&mut hashing, &scratch)?;
            let (blob_digest, _) = hashing
                .finish()
                .map_err(|e| ImageError::io("reading layer", &scratch, e))?;
            verify_blob(&blob_digest)?;
            diff_id.verify(&actual, format_args!("{what} (uncompressed content)"))?;
            self.commit_dir(&scratch, &self.layer_path(diff_id))?;
            Ok(size)
        })();
        if scratch.exists() {
            let _ = fs::remove_dir_all(&scratch);
        }
        result
    }

    pub(crate) fn known_layer_size(&self, diff_id: &Digest) -> Result<u64> {
        if let Some(record) = self.read_index()?.layers.get(diff_id) {
            return Ok(record.size);
        }
        // Unpacked by an attempt that failed before recording it: measure it.
        Ok(tree_size(&self.layer_path(diff_id)))
    }

    /// Makes `scratch` durable and moves it to `target` in one rename. If another writer got
    /// there first, its (identical, content-addressed) copy wins and `scratch` is dropped.
    fn commit_dir(&self, scratch: &Path, target: &Path) -> Result<()> {
        let dir = File::open(scratch)
            .map_err(|e| ImageError::io("opening unpacked layer", scratch, e))?;
        rustix::fs::syncfs(&dir)
            .map_err(|e| ImageError::io("syncing unpacked layer", scratch, e.into()))?;
        match fs::rename(scratch, target) {
            Ok(()) => {}
            Err(_) if target.is_dir() => {
                fs::remove_dir_all(scratch)
                    .map_err(|e| ImageError::io("dropping duplicate layer", scratch, e))?;
            }
            Err(e) => {
                return Err(ImageError::io(
                    "moving unpacked layer into place",
                    target,
                    e,
                ));
            }
        }
        sync_dir(target.parent().unwrap_or(target))
    }

    fn remove_layer_dir(&self, diff_id: &Digest) -> Result<()> {
        let path = self.layer_path(diff_id);
        if !path.exists() {
            return Ok(());
        }
        // Out of `layers/` first, so a crash mid-delete never leaves a partial layer behind a
        // complete-looking name.
        let doomed = self.scratch_path("removed-layer");
        fs::rename(&path, &doomed).map_err(|e| ImageError::io("removing layer", &path, e))?;
        fs::remove_dir_all(&doomed).map_err(|e| ImageError::io("removing layer", &doomed, e))
    }

    /// Stores `bytes` as the blob `digest` after checking it hashes to that digest.
    pub(crate) fn write_blob(&self, digest: &Digest, bytes: &[u8], what: &str) -> Result<()> {
        digest.verify(&Digest::of(bytes), what)?;
        let target = self.blob_path(digest);
        if target.exists() {
            return Ok(());
        }
        write_atomically(&self.scratch_path("blob"), &target, bytes)
    }

    /// Records a verified image and points `references` (normalised) at it. All layers must be
    /// in place. Blocking.
    pub(crate) fn record_image(
        &self,
        image: &VerifiedImage,
        references: &[ImageReference],
    ) -> Result<()> {
        for (diff_id, _) in &image.layers {
            if !self.layer_present(diff_id) {
                return Err(ImageError::invalid(
                    image.id.as_str(),
                    format!("layer {diff_id} is not unpacked"),
                ));
            }
        }
        self.write_blob(&image.id, &image.config_bytes, "image config")?;
        if let Some((digest, bytes)) = &image.manifest {
            self.write_blob(digest, bytes, "image manifest")?;
        }
        self.update_index(|index| {
            let record = index
                .images
                .entry(image.id.clone())
                .or_insert_with(|| ImageRecord {
                    manifests: BTreeSet::new(),
                    layers: image.layers.iter().map(|(d, _)| d.clone()).collect(),
                    run: image.run.clone(),
                });
            if let Some((digest, _)) = &image.manifest {
                record.manifests.insert(digest.clone());
            }
            for (diff_id, size) in &image.layers {
                index
                    .layers
                    .insert(diff_id.clone(), LayerRecord { size: *size });
            }
            for reference in references {
                index
                    .references
                    .insert(reference.to_string(), image.id.clone());
                if let Some((digest, _)) = &image.manifest {
                    index
                        .references
                        .insert(reference.with_digest(digest).to_string(), image.id.clone());
                }
            }
            Ok(())
        })
    }

    /// Resolves a recorded image for `reference` (which must now be in the index).
    pub(crate) fn resolved(&self, reference: &ImageReference) -> Result<ResolvedImage> {
        self.lookup_parsed(reference)?.ok_or_else(|| {
            ImageError::invalid(
                reference.to_string(),
                "image vanished from the cache while being recorded",
            )
        })
    }

    /// Also points `reference` at the already-cached image `id`.
    pub(crate) fn add_reference(
        &self,
        reference: &ImageReference,
        id: &Digest,
        manifest: Option<&Digest>,
    ) -> Result<()> {
        self.update_index(|index| {
            if !index.images.contains_key(id) {
                return Err(ImageError::NotCached {
                    reference: id.to_string(),
                });
            }
            index.references.insert(reference.to_string(), id.clone());
            if let Some(manifest) = manifest {
                index
                    .references
                    .insert(reference.with_digest(manifest).to_string(), id.clone());
            }
            Ok(())
        })
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.inner.root.join("index.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ImageError::io(
                    "reading image index",
                    &path,
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(ImageError::io("reading image index", &path, e)),
        }
    }

    /// Read-modify-write of `index.json` under the in-process mutex and the cross-process
    /// file lock; the change is written only if `change` succeeds.
    fn update_index<T>(&self, change: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let _guard = self
            .inner
            .index_mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let lock_path = self.inner.root.join("index.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| ImageError::io("opening index lock", &lock_path, e))?;
        lock.lock()
            .map_err(|e| ImageError::io("locking image index", &lock_path, e))?;
        let mut index = self.read_index()?;
        let result = change(&mut index)?;
        let bytes = serde_json::to_vec_pretty(&index).map_err(|e| {
            ImageError::io(
                "encoding image index",
                &lock_path,
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })?;
        write_atomically(
            &self.scratch_path("index"),
            &self.inner.root.join("index.json"),
            &bytes,
        )?;
        Ok(result)
    }

    /// An async lock for `key`, shared by every caller asking for the same key at once.
    pub(crate) async fn lock_key(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self
                .inner
                .keyed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            map.retain(|_, weak| weak.strong_count() > 0);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

fn write_atomically(scratch: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(scratch).map_err(|e| ImageError::io("writing", scratch, e))?;
    file.write_all(bytes)
        .map_err(|e| ImageError::io("writing", scratch, e))?;
    file.sync_all()
        .map_err(|e| ImageError::io("syncing", scratch, e))?;
    fs::rename(scratch, target).map_err(|e| ImageError::io("moving into place", target, e))?;
    sync_dir(target.parent().unwrap_or(target))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ImageError::io("syncing directory", dir, e))
}

/// Bytes of regular file content under `dir` (hard links counted once per inode).
fn tree_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total += meta.len();
            }
        }
    }
    total
}
