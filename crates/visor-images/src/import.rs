//! Importing images from files: an OCI image layout (directory or tar) or a `docker save`
//! archive (tar, optionally gzip-compressed as a whole).
//!
//! An archive is first extracted into a scratch directory of the cache (regular files,
//! directories and links only, nothing outside it), then read like a layout directory. Names
//! come from the archive: `RepoTags` in a `docker save` `manifest.json`; in an OCI layout the
//! `io.containerd.image.name` annotation, else `org.opencontainers.image.ref.name` when it is a
//! full reference (a bare tag such as `latest`, as Docker 25 writes there, names no repository
//! and is ignored). The caller may add one more reference when the file holds a single image.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use indicatif::ProgressBar;
use oci_client::manifest::{OciImageIndex, OciImageManifest};

use crate::digest::Digest;
use crate::error::{ImageError, Result, error_chain};
use crate::pull::LAYER_MEDIA_TYPES;
use crate::reference::ImageReference;
use crate::store::{ImageConfigFile, ImageStore, VerifiedImage};
use crate::unpack::decompressed;

const INDEX_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const NAME_ANNOTATION: &str = "io.containerd.image.name";
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// One image an import recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedImage {
    pub id: Digest,
    /// Normalised references now pointing at it (may be empty for an unnamed image).
    pub references: Vec<String>,
}

/// An image found in the source, not yet verified.
struct Candidate {
    names: Vec<ImageReference>,
    manifest: Option<(Digest, Vec<u8>)>,
    config_path: PathBuf,
    /// Digest the config must have, when the source names it.
    config_digest: Option<Digest>,
    /// Layer blob files with the digest each must have when the source names it.
    layers: Vec<(PathBuf, Option<Digest>)>,
}

/// Deletes the scratch extraction directory however the import ends.
struct ScratchGuard(Option<PathBuf>);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if let Some(path) = &self.0
            && let Err(e) = fs::remove_dir_all(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "could not delete import scratch directory");
        }
    }
}

impl ImageStore {
    /// Imports every image in `path` (an OCI layout directory or tar, or a `docker save`
    /// archive, either possibly gzip-compressed) and names it as the file says, plus
    /// `extra_reference` if given (only allowed when the file holds exactly one image).
    ///
    /// Flow: extract (archives) → find images → for each: verify the config (and manifest, for
    /// OCI) digest → unpack missing layers, verifying each blob digest the source names and
    /// every diff ID → record. `progress` gets its length set and advances over the bytes of
    /// the file and then of the layers read; it may be hidden (no terminal) — pass
    /// `ProgressBar::hidden()` for none.
    ///
    /// Guarantees: a digest mismatch is an error and records nothing for that image; images
    /// before it in the same file stay imported. Blocking: async callers use `spawn_blocking`.
    pub fn import(
        &self,
        path: &Path,
        extra_reference: Option<&str>,
        progress: &ProgressBar,
    ) -> Result<Vec<ImportedImage>> {
        let extra = extra_reference.map(ImageReference::parse).transpose()?;
        let meta = fs::metadata(path).map_err(|e| ImageError::io("opening image file", path, e))?;
        let mut scratch = ScratchGuard(None);
        let root = if meta.is_dir() {
            path.to_path_buf()
        } else {
            let dir = self.scratch_dir("import")?;
            scratch.0 = Some(dir.clone());
            progress.set_length(meta.len());
            let file =
                File::open(path).map_err(|e| ImageError::io("opening image file", path, e))?;
            extract_archive(progress.wrap_read(BufReader::new(file)), &dir, path)?;
            dir
        };

        let mut candidates = if root.join("manifest.json").is_file() {
            docker_save_candidates(&root)?
        } else if root.join("index.json").is_file() {
            oci_layout_candidates(&root)?
        } else {
            return Err(ImageError::invalid(
                path.display().to_string(),
                "neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)",
            ));
        };
        if candidates.is_empty() {
            return Err(ImageError::invalid(
                path.display().to_string(),
                "holds no images",
            ));
        }
        if let Some(extra) = extra {
            if candidates.len() != 1 {
                return Err(ImageError::invalid(
                    path.display().to_string(),
                    format!(
                        "holds {} images; an extra reference needs exactly one",
                        candidates.len()
                    ),
                ));
            }
            candidates[0].names.push(extra);
        }
        let layer_bytes: u64 = candidates
            .iter()
            .flat_map(|c| &c.layers)
            .filter_map(|(p, _)| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        progress.inc_length(layer_bytes);

        let mut imported = Vec::new();
        for candidate in candidates {
            imported.push(self.import_candidate(candidate, progress)?);
        }
        Ok(imported)
    }

    fn import_candidate(
        &self,
        candidate: Candidate,
        progress: &ProgressBar,
    ) -> Result<ImportedImage> {
        let config_bytes = fs::read(&candidate.config_path)
            .map_err(|e| ImageError::io("reading image config", &candidate.config_path, e))?;
        let id = Digest::of(&config_bytes);
        if let Some(expected) = &candidate.config_digest {
            expected.verify(&id, "image config")?;
        }
        let what = candidate
            .names
            .first()
            .map(ToString::to_string)
            .unwrap_or_else(|| id.to_string());
        let config = ImageConfigFile::parse(&config_bytes, &what)?;
        if config.rootfs.diff_ids.len() != candidate.layers.len() {
            return Err(ImageError::invalid(
                &what,
                format!(
                    "{} layers given but the config lists {}",
                    candidate.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for ((blob_path, blob_digest), diff_id) in
            candidate.layers.iter().zip(&config.rootfs.diff_ids)
        {
            let layer_what = format!("layer {} of {what}", blob_path.display());
            let size = if self.layer_present(diff_id) {
                if let Ok(meta) = fs::metadata(blob_path) {
                    progress.inc(meta.len());
                }
                self.known_layer_size(diff_id)?
            } else {
                let file = File::open(blob_path)
                    .map_err(|e| ImageError::io("opening layer", blob_path, e))?;
                let reader = progress.wrap_read(BufReader::with_capacity(256 * 1024, file));
                self.install_layer(
                    diff_id,
                    reader,
                    |actual| match blob_digest {
                        Some(expected) => expected.verify(actual, &layer_what),
                        None => Ok(()),
                    },
                    &layer_what,
                )?
            };
            layers.push((diff_id.clone(), size));
        }
        let image = VerifiedImage {
            id: id.clone(),
            config_bytes,
            manifest: candidate.manifest,
            layers,
            run: config.config.unwrap_or_default(),
        };
        self.record_image(&image, &candidate.names)?;
        let mut references: Vec<String> = candidate.names.iter().map(ToString::to_string).collect();
        references.dedup();
        Ok(ImportedImage { id, references })
    }
}

/// Extracts an image archive (tar, or gzip/zstd-compressed tar) into `dest`.
fn extract_archive(reader: impl Read, dest: &Path, source: &Path) -> Result<()> {
    let fail = |e: std::io::Error| ImageError::io("reading image archive", source, e);
    let (_, plain) = decompressed(reader).map_err(fail)?;
    let mut archive = tar::Archive::new(plain);
    for entry in archive.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        let path = entry.path().map_err(fail)?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(ImageError::invalid(
                source.display().to_string(),
                format!("archive entry {} escapes the archive", path.display()),
            ));
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Directory
            | tar::EntryType::Symlink
            | tar::EntryType::Link => {}
            other => {
                return Err(ImageError::invalid(
                    source.display().to_string(),
                    format!(
                        "unexpected {other:?} entry {} in an image archive",
                        path.display()
                    ),
                ));
            }
        }
        let unpacked = entry.unpack_in(dest).map_err(|e| {
            ImageError::invalid(
                source.display().to_string(),
                format!("extracting {}: {}", path.display(), error_chain(&e)),
            )
        })?;
        if !unpacked {
            return Err(ImageError::invalid(
                source.display().to_string(),
                format!("archive entry {} escapes the archive", path.display()),
            ));
        }
    }
    // Drain trailing padding so a truncated gzip stream is still reported.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(fail)?;
    Ok(())
}

/// `root/rel`, refusing absolute paths, `..` and anything that resolves (through symlinks)
/// outside `root`.
fn path_within(root: &Path, rel: &str) -> Result<PathBuf> {
    let rel_path = Path::new(rel);
    if rel_path.is_absolute()
        || rel_path
            .components()
            .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(ImageError::invalid(
            "archive",
            format!("path {rel:?} leaves the archive"),
        ));
    }
    let joined = root.join(rel_path);
    let canonical = joined
        .canonicalize()
        .map_err(|e| ImageError::io("finding file named in the archive", &joined, e))?;
    let canonical_root = root
        .canonicalize()
        .map_err(|e| ImageError::io("resolving", root, e))?;
    if !canonical.starts_with(&canonical_root) {
        return Err(ImageError::invalid(
            "archive",
            format!("path {rel:?} leaves the archive"),
        ));
    }
    Ok(canonical)
}

fn blob_path(root: &Path, digest: &Digest) -> Result<PathBuf> {
    path_within(root, &format!("blobs/sha256/{}", digest.hex()))
}

/// Reads a blob of an OCI layout and checks its digest.
fn read_blob(root: &Path, digest: &Digest, what: &str) -> Result<Vec<u8>> {
    let path = blob_path(root, digest)?;
    let bytes = fs::read(&path).map_err(|e| ImageError::io("reading blob", &path, e))?;
    digest.verify(&Digest::of(&bytes), what)?;
    Ok(bytes)
}

/// The digest a file name spells (`<hex>.json`, `blobs/sha256/<hex>`), if any.
fn digest_in_name(rel: &str) -> Option<Digest> {
    let name = Path::new(rel).file_name()?.to_str()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    let in_blobs = rel.contains("sha256/") || name.ends_with(".json");
    in_blobs.then(|| Digest::from_hex(hex).ok()).flatten()
}

fn docker_save_candidates(root: &Path) -> Result<Vec<Candidate>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let manifest_path = root.join("manifest.json");
    let bytes = fs::read(&manifest_path)
        .map_err(|e| ImageError::io("reading manifest.json", &manifest_path, e))?;
    let entries: Vec<Entry> = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::invalid("docker save archive", format!("manifest.json: {e}")))?;
    entries
        .into_iter()
        .map(|entry| {
            let names = entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| ImageReference::parse(t))
                .collect::<Result<Vec<_>>>()?;
            let layers = entry
                .layers
                .iter()
                .map(|rel| {
                    Ok((
                        path_within(root, rel)?,
                        digest_in_name(rel).filter(|_| rel.starts_with("blobs/")),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Candidate {
                names,
                manifest: None,
                config_digest: digest_in_name(&entry.config),
                config_path: path_within(root, &entry.config)?,
                layers,
            })
        })
        .collect()
}

fn oci_layout_candidates(root: &Path) -> Result<Vec<Candidate>> {
    let layout_path = root.join("oci-layout");
    let layout = fs::read(&layout_path)
        .map_err(|e| ImageError::io("reading oci-layout", &layout_path, e))?;
    let layout: serde_json::Value = serde_json::from_slice(&layout)
        .map_err(|e| ImageError::invalid("OCI layout", format!("oci-layout: {e}")))?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(ImageError::invalid(
            "OCI layout",
            "oci-layout has no imageLayoutVersion",
        ));
    }
    let index_path = root.join("index.json");
    let bytes =
        fs::read(&index_path).map_err(|e| ImageError::io("reading index.json", &index_path, e))?;
    let index: OciImageIndex = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::invalid("OCI layout", format!("index.json: {e}")))?;
    let mut candidates = Vec::new();
    for entry in &index.manifests {
        let names = names_from_annotations(entry.annotations.as_ref())?;
        let mut digest = Digest::parse(&entry.digest)?;
        let mut media_type = entry.media_type.clone();
        if INDEX_MEDIA_TYPES.contains(&media_type.as_str()) {
            let nested = read_blob(root, &digest, "image index")?;
            let nested: OciImageIndex = serde_json::from_slice(&nested).map_err(|e| {
                ImageError::invalid("OCI layout", format!("image index {digest}: {e}"))
            })?;
            let Some(chosen) = nested.manifests.iter().find(|m| {
                m.platform.as_ref().is_some_and(|p| {
                    p.os.to_string() == "linux" && p.architecture.to_string() == "amd64"
                })
            }) else {
                return Err(ImageError::invalid(
                    "OCI layout",
                    format!("image index {digest} has no linux/amd64 image"),
                ));
            };
            digest = Digest::parse(&chosen.digest)?;
            media_type = chosen.media_type.clone();
        }
        if !media_type.contains("manifest") {
            tracing::warn!(%digest, %media_type, "skipping an OCI layout entry that is not an image");
            continue;
        }
        let manifest_bytes = read_blob(root, &digest, "image manifest")?;
        let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
            ImageError::invalid("OCI layout", format!("image manifest {digest}: {e}"))
        })?;
        let config_digest = Digest::parse(&manifest.config.digest)?;
        let mut layers = Vec::new();
        for layer in &manifest.layers {
            if !LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()) {
                return Err(ImageError::invalid(
                    "OCI layout",
                    format!(
                        "layer media type {:?} is not a container filesystem layer",
                        layer.media_type
                    ),
                ));
            }
            let layer_digest = Digest::parse(&layer.digest)?;
            layers.push((blob_path(root, &layer_digest)?, Some(layer_digest)));
        }
        candidates.push(Candidate {
            names,
            manifest: Some((digest, manifest_bytes)),
            config_path: blob_path(root, &config_digest)?,
            config_digest: Some(config_digest),
            layers,
        });
    }
    Ok(candidates)
}

fn names_from_annotations(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Vec<ImageReference>> {
    let Some(annotations) = annotations else {
        return Ok(Vec::new());
    };
    if let Some(name) = annotations.get(NAME_ANNOTATION) {
        return Ok(vec![ImageReference::parse(name)?]);
    }
    match annotations.get(REF_NAME_ANNOTATION) {
        Some(name) if name.contains(['/', ':', '@']) => Ok(vec![ImageReference::parse(name)?]),
        _ => Ok(Vec::new()),
    }
}
