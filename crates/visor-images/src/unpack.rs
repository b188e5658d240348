//! Unpacking one layer tarball into a directory that overlayfs can use as a lower layer.
//!
//! Layers arrive as tar, tar+gzip or tar+zstd (sniffed from the first bytes, so a mislabelled
//! media type does not matter). Each layer is unpacked on its own, never on top of another:
//! the runtime stacks them with overlayfs. That is why OCI whiteouts are converted rather than
//! applied: `.wh.NAME` becomes a character device 0/0 named `NAME` and `.wh..wh..opq` becomes the
//! xattr `trusted.overlay.opaque=y` on its directory — overlayfs's own spelling of the same two
//! ideas.
//!
//! Guarantees: modes, ownership, mtimes of files, xattrs, symlinks, hard links within the layer
//! and device nodes are kept; no entry may write outside the destination (a `..` component, a
//! hard link to outside, or a parent that is a symlink is an error, not a silently skipped
//! entry); the uncompressed stream's sha256 (the layer's "diff ID") is computed on the way and
//! returned so the caller can check it against the image config.
//!
//! Caveat: needs root (device nodes, `trusted.*` xattrs, ownership), as the agent runs.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Cursor, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result, error_chain};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How a blob is compressed, judged by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Wraps `reader` in the decompressor its first bytes call for (gzip, zstd, or none).
pub fn decompressed<'a>(
    mut reader: impl Read + 'a,
) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut magic = [0u8; 4];
    let mut have = 0;
    while have < magic.len() {
        match reader.read(&mut magic[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let whole = Cursor::new(magic[..have].to_vec()).chain(reader);
    if have >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok((
            Compression::Gzip,
            Box::new(flate2::read::MultiGzDecoder::new(whole)),
        ))
    } else if have == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let decoder = ruzstd::decoding::StreamingDecoder::new(whole)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
        Ok((Compression::Zstd, Box::new(decoder)))
    } else {
        Ok((Compression::None, Box::new(whole)))
    }
}

/// What unpacking a layer found out.
#[derive(Clone, Debug)]
pub struct UnpackedLayer {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Bytes of regular file content written (hard links counted once).
    pub size: u64,
}

/// Unpacks the (possibly compressed) layer tarball read from `blob` into `dest`, which must be
/// an existing, empty directory. On error `dest` is left half-filled: the caller unpacks into a
/// scratch directory and renames it into place only on success.
pub fn unpack_layer(blob: impl Read, dest: &Path) -> Result<UnpackedLayer> {
    let fail = |e: io::Error| ImageError::io("unpacking layer", dest, e);
    let (_, plain) = decompressed(blob).map_err(fail)?;
    let mut hashing = HashingReader::new(plain);
    let mut size = 0u64;
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        for entry in archive.entries().map_err(fail)? {
            let mut entry = entry.map_err(fail)?;
            let raw_path = entry.path().map_err(fail)?.into_owned();
            let Some(rel) = relative_path(&raw_path)? else {
                apply_root_attributes(&entry, dest)?;
                continue;
            };
            let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
            let parent_rel = rel.parent().unwrap_or(Path::new(""));
            if name == OPAQUE_MARKER.as_bytes() {
                let dir = ensure_dir_within(dest, parent_rel)?;
                xattr::set(&dir, OPAQUE_XATTR, b"y")
                    .map_err(|e| ImageError::io("marking directory opaque", &dir, e))?;
                continue;
            }
            if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                let hidden = &name[WHITEOUT_PREFIX.len()..];
                if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                    // Other `.wh..wh.` names are AUFS bookkeeping (hard link directories) with no
                    // meaning in an unpacked tree.
                    continue;
                }
                let parent = ensure_dir_within(dest, parent_rel)?;
                let target = parent.join(OsStr::from_bytes(hidden));
                remove_existing(&target)?;
                make_node(&target, rustix::fs::FileType::CharacterDevice, 0, 0, 0)?;
                continue;
            }
            let kind = entry.header().entry_type();
            match kind {
                EntryType::Char | EntryType::Block | EntryType::Fifo => {
                    let parent = ensure_dir_within(dest, parent_rel)?;
                    let target = parent.join(rel.file_name().unwrap_or_default());
                    remove_existing(&target)?;
                    let header = entry.header();
                    let file_type = match kind {
                        EntryType::Char => rustix::fs::FileType::CharacterDevice,
                        EntryType::Block => rustix::fs::FileType::BlockDevice,
                        _ => rustix::fs::FileType::Fifo,
                    };
                    let major = header.device_major().map_err(fail)?.unwrap_or(0);
                    let minor = header.device_minor().map_err(fail)?.unwrap_or(0);
                    let mode = header.mode().map_err(fail)? & 0o7777;
                    make_node(&target, file_type, mode, major, minor)?;
                    let (uid, gid) = (header.uid().map_err(fail)?, header.gid().map_err(fail)?);
                    lchown(&target, Some(uid as u32), Some(gid as u32))
                        .map_err(|e| ImageError::io("setting owner", &target, e))?;
                }
                EntryType::Link => {
                    let link = entry
                        .link_name()
                        .map_err(fail)?
                        .ok_or_else(|| {
                            ImageError::invalid(
                                "layer",
                                format!("hard link {} has no target", rel.display()),
                            )
                        })?
                        .into_owned();
                    let Some(link_rel) = relative_path(&link)? else {
                        return Err(ImageError::invalid(
                            "layer",
                            format!("hard link {} points at the layer root", rel.display()),
                        ));
                    };
                    let source_parent = ensure_existing_dir_within(
                        dest,
                        link_rel.parent().unwrap_or(Path::new("")),
                    )?;
                    let source = source_parent.join(link_rel.file_name().unwrap_or_default());
                    // The source's parents are real directories inside the layer (checked above)
                    // and `link(2)` does not follow a final symlink, so the link stays inside.
                    if fs::symlink_metadata(&source).is_err() {
                        return Err(ImageError::invalid(
                            "layer",
                            format!(
                                "hard link {} -> {}: target is not in the layer",
                                rel.display(),
                                link.display()
                            ),
                        ));
                    }
                    let parent = ensure_dir_within(dest, parent_rel)?;
                    let target = parent.join(rel.file_name().unwrap_or_default());
                    remove_existing(&target)?;
                    fs::hard_link(&source, &target)
                        .map_err(|e| ImageError::io("hard linking", &target, e))?;
                }
                _ => {
                    if kind == EntryType::Regular || kind == EntryType::Continuous {
                        size += entry.header().size().unwrap_or(0);
                    }
                    let unpacked = entry.unpack_in(dest).map_err(|e| {
                        ImageError::invalid(
                            "layer",
                            format!("unpacking {}: {}", rel.display(), error_chain(&e)),
                        )
                    })?;
                    if !unpacked {
                        return Err(ImageError::invalid(
                            "layer",
                            format!(
                                "entry {} would be written outside the layer",
                                raw_path.display()
                            ),
                        ));
                    }
                }
            }
        }
    }
    let (diff_id, _) = hashing.finish().map_err(fail)?;
    Ok(UnpackedLayer { diff_id, size })
}

/// The entry's path relative to the layer root, or `None` for the root itself. `..` anywhere is
/// an error: a layer has no business naming it, and skipping it would hide a malicious image.
fn relative_path(path: &Path) -> Result<Option<PathBuf>> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::invalid(
                    "layer",
                    format!("entry {} escapes the layer root", path.display()),
                ));
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Creates `rel` under `root` component by component, refusing to go through anything that is
/// not a real directory, so a symlink planted earlier in the layer cannot redirect a write.
fn ensure_dir_within(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut current = root.to_path_buf();
    for part in rel.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::invalid(
                    "layer",
                    format!(
                        "{} is used as a directory but is not one",
                        current.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current)
                    .map_err(|e| ImageError::io("creating directory", &current, e))?;
            }
            Err(e) => return Err(ImageError::io("inspecting", &current, e)),
        }
    }
    Ok(current)
}

/// Like [`ensure_dir_within`] but for a path that must already exist (a hard link's source).
fn ensure_existing_dir_within(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut current = root.to_path_buf();
    for part in rel.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            _ => {
                return Err(ImageError::invalid(
                    "layer",
                    format!(
                        "hard link source directory {} is not a directory in the layer",
                        current.display()
                    ),
                ));
            }
        }
    }
    Ok(current)
}

fn remove_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(path).map_err(|e| ImageError::io("replacing", path, e))
        }
        Ok(_) => fs::remove_file(path).map_err(|e| ImageError::io("replacing", path, e)),
        Err(_) => Ok(()),
    }
}

fn make_node(
    path: &Path,
    file_type: rustix::fs::FileType,
    mode: u32,
    major: u32,
    minor: u32,
) -> Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        file_type,
        rustix::fs::Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .map_err(|e| ImageError::io("creating device node", path, e.into()))
}

/// The layer's own entry for `/` (usually `./`) carries the root directory's mode and owner.
fn apply_root_attributes<R: Read>(entry: &tar::Entry<'_, R>, dest: &Path) -> Result<()> {
    let header = entry.header();
    if header.entry_type() != EntryType::Directory {
        return Ok(());
    }
    if let Ok(mode) = header.mode() {
        fs::set_permissions(dest, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| ImageError::io("setting root mode", dest, e))?;
    }
    if let (Ok(uid), Ok(gid)) = (header.uid(), header.gid()) {
        lchown(dest, Some(uid as u32), Some(gid as u32))
            .map_err(|e| ImageError::io("setting root owner", dest, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::FileTypeExt as _;

    use super::*;

    /// A tar entry whose name is written raw, so names `tar::Builder` would refuse can be made.
    fn raw_entry(
        builder: &mut tar::Builder<Vec<u8>>,
        kind: EntryType,
        name: &str,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut header = tar::Header::new_old();
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    fn unpack_entries(
        build: impl FnOnce(&mut tar::Builder<Vec<u8>>),
    ) -> (tempfile::TempDir, Result<UnpackedLayer>) {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let bytes = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let result = unpack_layer(&bytes[..], &dest);
        (dir, result)
    }

    #[test]
    fn parent_components_are_refused() {
        let (dir, result) =
            unpack_entries(|b| raw_entry(b, EntryType::Regular, "../escaped", None, b"x"));
        let err = result.unwrap_err();
        assert!(err.to_string().contains("escapes the layer root"), "{err}");
        assert!(!dir.path().join("escaped").exists());
    }

    #[test]
    fn writes_through_a_symlink_out_of_the_layer_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_string();
        let (_dir, result) = unpack_entries(|b| {
            raw_entry(b, EntryType::Symlink, "link", Some(&target), b"");
            raw_entry(b, EntryType::Regular, "link/planted", None, b"x");
        });
        let err = result.unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(!outside.path().join("planted").exists());

        let (_dir, result) = unpack_entries(|b| {
            raw_entry(b, EntryType::Symlink, "link", Some(&target), b"");
            raw_entry(b, EntryType::Regular, "link/.wh.victim", None, b"");
        });
        let err = result.unwrap_err();
        assert!(
            err.to_string()
                .contains("is used as a directory but is not one"),
            "{err}"
        );
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn hard_links_out_of_the_layer_are_refused() {
        for link in ["../../etc/passwd", "/etc/passwd"] {
            let (_dir, result) =
                unpack_entries(|b| raw_entry(b, EntryType::Link, "stolen", Some(link), b""));
            let err = result.unwrap_err();
            assert!(
                [
                    "escapes the layer root",
                    "not in the layer",
                    "is not a directory in the layer"
                ]
                .iter()
                .any(|m| err.to_string().contains(m)),
                "hard link to {link}: {err}"
            );
        }
        // Within the layer, absolute spelling included, it works.
        let (dir, result) = unpack_entries(|b| {
            raw_entry(b, EntryType::Regular, "a", None, b"data");
            raw_entry(b, EntryType::Link, "b", Some("/a"), b"");
        });
        result.unwrap();
        assert_eq!(fs::read(dir.path().join("layer/b")).unwrap(), b"data");
    }

    #[test]
    fn zstd_layers_unpack_and_report_the_uncompressed_digest() {
        let mut builder = tar::Builder::new(Vec::new());
        raw_entry(
            &mut builder,
            EntryType::Regular,
            "hello",
            None,
            b"zstd layer",
        );
        raw_entry(&mut builder, EntryType::Fifo, "pipe", None, b"");
        let plain = builder.into_inner().unwrap();
        let compressed = ruzstd::encoding::compress_to_vec(
            &plain[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let dir = tempfile::tempdir().unwrap();
        let unpacked = unpack_layer(&compressed[..], dir.path()).unwrap();
        assert_eq!(unpacked.diff_id, Digest::of(&plain));
        assert_eq!(unpacked.size, 10);
        assert_eq!(fs::read(dir.path().join("hello")).unwrap(), b"zstd layer");
        assert!(
            fs::symlink_metadata(dir.path().join("pipe"))
                .unwrap()
                .file_type()
                .is_fifo()
        );

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let (kind, _) = decompressed(&gz[..]).unwrap();
        assert_eq!(kind, Compression::Gzip);
        let (kind, _) = decompressed(&compressed[..]).unwrap();
        assert_eq!(kind, Compression::Zstd);
        let (kind, _) = decompressed(&plain[..]).unwrap();
        assert_eq!(kind, Compression::None);
    }
}
