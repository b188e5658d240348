//! The image cache end to end: imports of both file formats, pulls from an in-process
//! registry, pull policies, digest checks, sharing and concurrency, removal.
//!
//! Images are built at test time from the host's static busybox (`visor_images::testing`);
//! nothing is downloaded. Needs root (device nodes and `trusted.*` xattrs for whiteouts).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use indicatif::ProgressBar;
use visor_images::testing::{
    BusyboxImageOptions, TestImage, TestRegistry, build_busybox_image, build_busybox_image_with,
};
use visor_images::{ImageError, ImageStore, PullPolicy, RegistryAuth, ResolvedImage, StoreOptions};

fn variant(dir: &Path, reference: &str, name: &str) -> TestImage {
    build_busybox_image_with(
        dir,
        reference,
        &BusyboxImageOptions {
            variant: name.to_string(),
            ..BusyboxImageOptions::default()
        },
    )
    .expect("build test image")
}

/// Asserts the unpacked tree of the test image: files, modes, owners, links, and the two
/// whiteouts in overlayfs form.
fn assert_unpacked_test_image(image: &ResolvedImage, variant: &str) {
    assert_eq!(image.layers.len(), 2);
    let (base, upper) = (&image.layers[0], &image.layers[1]);

    let busybox = fs::metadata(base.join("bin/busybox")).unwrap();
    assert!(busybox.is_file());
    assert_eq!(busybox.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        busybox.len(),
        fs::metadata("/usr/bin/busybox").unwrap().len()
    );
    for applet in ["sh", "echo", "sleep", "cat", "httpd", "nc"] {
        assert_eq!(
            fs::read_link(base.join("bin").join(applet)).unwrap(),
            Path::new("busybox"),
            "{applet}"
        );
    }
    let tmp = fs::metadata(base.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    let home = fs::metadata(base.join("home/user")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.permissions().mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    let hello = fs::metadata(base.join("usr/share/hello.txt")).unwrap();
    let link = fs::metadata(base.join("usr/share/hello-link.txt")).unwrap();
    assert_eq!(hello.ino(), link.ino(), "hard link within the layer");
    assert_eq!(hello.nlink(), 2);
    assert!(base.join("etc/doomed").is_file());
    assert!(base.join("var/cache/old/stale.txt").is_file());

    let whiteout = fs::symlink_metadata(upper.join("etc/doomed")).unwrap();
    assert!(
        whiteout.file_type().is_char_device(),
        "whiteout must be a character device"
    );
    assert_eq!(whiteout.rdev(), 0, "whiteout must be device 0/0");
    let opaque = xattr::get(upper.join("var/cache"), "trusted.overlay.opaque").unwrap();
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    assert_eq!(
        fs::read_to_string(upper.join("var/cache/fresh.txt")).unwrap(),
        "written by the upper layer\n"
    );
    assert_eq!(
        fs::read_to_string(upper.join("etc/visor-variant")).unwrap(),
        format!("{variant}\n")
    );
    for layer in &image.layers {
        let mut names = Vec::new();
        collect_names(layer, &mut names);
        assert!(
            names.iter().all(|n| !n.starts_with(".wh.")),
            "no OCI whiteout file may remain in {}: {names:?}",
            layer.display()
        );
    }

    assert_eq!(image.cmd, vec!["sh".to_string()]);
    assert!(image.entrypoint.is_empty());
    assert_eq!(
        image.env[0],
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(image.working_dir.as_deref(), Some("/"));
    assert_eq!(image.user, None);
    assert!(image.size > busybox.len());
}

/// Resolves `reference` with `policy` and no registry credentials, as a pod without pull
/// secrets does.
async fn ensure_anonymous(
    store: &ImageStore,
    reference: &str,
    policy: PullPolicy,
) -> Result<ResolvedImage, ImageError> {
    store
        .ensure(reference, policy, &RegistryAuth::Anonymous)
        .await
}

/// Builds the default test image, serves it from a fresh in-process registry as
/// `repository:tag`, and opens an empty store under `work/images`.
async fn served_test_image(
    work: &Path,
    repository: &str,
    tag: &str,
) -> (TestImage, TestRegistry, ImageStore) {
    let image = build_busybox_image(
        &work.join("build"),
        &format!("localhost/{repository}:{tag}"),
    )
    .unwrap();
    let registry = TestRegistry::start().await.unwrap();
    registry.push_image(repository, tag, &image).unwrap();
    let store = ImageStore::open(&work.join("images")).unwrap();
    (image, registry, store)
}

fn collect_names(dir: &Path, names: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        names.push(entry.file_name().to_string_lossy().into_owned());
        if entry.file_type().unwrap().is_dir() {
            collect_names(&entry.path(), names);
        }
    }
}

fn dir_entries(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn import_oci_archive_unpacks_layers_with_overlay_whiteouts() {
    let work = tempfile::tempdir().unwrap();
    let image =
        build_busybox_image(&work.path().join("build"), "127.0.0.1:5000/test/busybox:v1").unwrap();
    let store = ImageStore::open(&work.path().join("images")).unwrap();

    let imported = store
        .import(&image.oci_archive, None, &ProgressBar::hidden())
        .unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].id, image.id);
    assert_eq!(
        imported[0].references,
        vec!["127.0.0.1:5000/test/busybox:v1".to_string()]
    );

    let resolved = store
        .lookup("127.0.0.1:5000/test/busybox:v1")
        .unwrap()
        .expect("imported image is cached");
    assert_eq!(resolved.id, image.id);
    assert_eq!(
        resolved.repo_digest.as_deref(),
        Some(format!("127.0.0.1:5000/test/busybox@{}", image.manifest_digest).as_str())
    );
    assert_eq!(
        resolved.layers[0],
        work.path()
            .join("images/layers/sha256")
            .join(image.diff_ids[0].hex())
    );
    assert_unpacked_test_image(&resolved, "default");
    // The scratch extraction directory is gone.
    assert!(dir_entries(&work.path().join("images/tmp")).is_empty());
}

#[test]
fn import_oci_layout_directory_with_an_extra_reference() {
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(&work.path().join("build"), "localhost/app:1").unwrap();
    let store = ImageStore::open(&work.path().join("images")).unwrap();

    let imported = store
        .import(
            &image.oci_layout_dir,
            Some("busybox"),
            &ProgressBar::hidden(),
        )
        .unwrap();
    assert_eq!(
        imported[0].references,
        vec![
            "localhost/app:1".to_string(),
            "docker.io/library/busybox:latest".to_string()
        ]
    );
    let by_extra = store
        .lookup("docker.io/library/busybox:latest")
        .unwrap()
        .unwrap();
    let by_name = store.lookup("localhost/app:1").unwrap().unwrap();
    assert_eq!(by_extra.id, by_name.id);
    assert_eq!(by_extra.layers, by_name.layers);
    // The layout directory itself is left alone.
    assert!(image.oci_layout_dir.join("index.json").is_file());
}

#[test]
fn import_docker_save_archives_plain_and_gzipped() {
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(&work.path().join("build"), "busybox:test").unwrap();

    let plain = ImageStore::open(&work.path().join("plain")).unwrap();
    let imported = plain
        .import(&image.docker_archive, None, &ProgressBar::hidden())
        .unwrap();
    assert_eq!(
        imported[0].references,
        vec!["docker.io/library/busybox:test".to_string()]
    );
    assert_eq!(imported[0].id, image.id);
    let resolved = plain.lookup("busybox:test").unwrap().unwrap();
    assert_unpacked_test_image(&resolved, "default");
    assert_eq!(
        resolved.repo_digest, None,
        "docker save archives carry no registry manifest"
    );

    let gzipped = ImageStore::open(&work.path().join("gz")).unwrap();
    let imported = gzipped
        .import(&image.docker_archive_gz, None, &ProgressBar::hidden())
        .unwrap();
    assert_eq!(imported[0].id, image.id);
    assert_unpacked_test_image(&gzipped.lookup("busybox:test").unwrap().unwrap(), "default");
}

#[test]
fn import_refuses_a_tampered_layer_and_records_nothing() {
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(&work.path().join("build"), "localhost/tampered:1").unwrap();
    let upper_blob = image
        .oci_layout_dir
        .join("blobs/sha256")
        .join(image.layer_digests[1].hex());
    let mut bytes = fs::read(&upper_blob).unwrap();
    let middle = bytes.len() / 3;
    bytes[middle] ^= 0x01;
    fs::write(&upper_blob, bytes).unwrap();

    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let err = store
        .import(&image.oci_layout_dir, None, &ProgressBar::hidden())
        .unwrap_err();
    match &err {
        ImageError::DigestMismatch { expected, .. } => {
            assert_eq!(expected, image.layer_digests[1].as_str())
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(store.images().unwrap().is_empty());
    assert!(store.lookup("localhost/tampered:1").unwrap().is_none());
    assert!(
        !work
            .path()
            .join("images/layers/sha256")
            .join(image.diff_ids[1].hex())
            .exists(),
        "a layer that failed verification must not be in place"
    );
    assert!(dir_entries(&work.path().join("images/tmp")).is_empty());
}

#[test]
fn import_refuses_a_tampered_config() {
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(&work.path().join("build"), "localhost/tampered:2").unwrap();
    let config = image
        .oci_layout_dir
        .join("blobs/sha256")
        .join(image.config_digest.hex());
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("\"sh\"", "\"ls\"");
    fs::write(&config, text).unwrap();
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let err = store
        .import(&image.oci_layout_dir, None, &ProgressBar::hidden())
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn import_command_works_without_a_terminal_and_list_shows_it() {
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(&work.path().join("build"), "busybox:cli").unwrap();
    let agent_dir = work.path().join("agent");
    visor_images::import_command(
        &image.docker_archive_gz,
        &agent_dir,
        Some("localhost/extra:1".into()),
    )
    .unwrap();
    let store = ImageStore::open(&visor_images::images_dir(&agent_dir)).unwrap();
    let images = store.images().unwrap();
    assert_eq!(images.len(), 1);
    let table = visor_images::format_image_table(&images);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("REFERENCE"), "{table}");
    assert!(
        lines[0].contains("IMAGE ID") && lines[0].contains("SIZE"),
        "{table}"
    );
    assert!(lines.iter().any(|l| l.starts_with("docker.io/library/busybox:cli") && l.contains(image.id.short())), "{table}");
    assert!(
        lines.iter().any(|l| l.starts_with("localhost/extra:1")),
        "{table}"
    );
    assert!(lines[1].contains("MiB"), "{table}");
    visor_images::list(&agent_dir).unwrap();
}

#[test]
fn remove_keeps_shared_layers_until_the_last_image_goes() {
    let work = tempfile::tempdir().unwrap();
    let one = variant(&work.path().join("one"), "localhost/app:one", "one");
    let two = variant(&work.path().join("two"), "localhost/app:two", "two");
    assert_eq!(
        one.diff_ids[0], two.diff_ids[0],
        "variants share the base layer"
    );
    assert_ne!(one.diff_ids[1], two.diff_ids[1]);
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    store
        .import(
            &one.oci_archive,
            Some("localhost/app:alias"),
            &ProgressBar::hidden(),
        )
        .unwrap();
    store
        .import(&two.oci_archive, None, &ProgressBar::hidden())
        .unwrap();
    let usage = store.usage().unwrap();
    assert_eq!((usage.images, usage.layers), (2, 3));
    assert!(usage.total_bytes() > fs::metadata("/usr/bin/busybox").unwrap().len());

    // One of two tags: only untagged.
    assert_eq!(store.remove("localhost/app:alias").unwrap(), None);
    assert!(store.lookup("localhost/app:one").unwrap().is_some());
    // The last tag: the image and its own layer go, the shared one stays.
    assert_eq!(
        store.remove("localhost/app:one").unwrap(),
        Some(one.id.clone())
    );
    let layers = work.path().join("images/layers/sha256");
    assert_eq!(
        dir_entries(&layers),
        BTreeSet::from([
            two.diff_ids[0].hex().to_string(),
            two.diff_ids[1].hex().to_string()
        ])
    );
    assert!(
        !work
            .path()
            .join("images/blobs/sha256")
            .join(one.config_digest.hex())
            .exists()
    );
    assert!(store.lookup("localhost/app:two").unwrap().is_some());
    // By image ID.
    assert_eq!(store.remove(two.id.as_str()).unwrap(), Some(two.id.clone()));
    assert!(dir_entries(&layers).is_empty());
    assert_eq!(store.usage().unwrap(), visor_images::Usage::default());
    assert!(matches!(
        store.remove("localhost/app:two"),
        Err(ImageError::NotCached { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_by_digest() {
    let work = tempfile::tempdir().unwrap();
    let image =
        build_busybox_image(&work.path().join("build"), "localhost/team/busybox:1").unwrap();
    let registry = TestRegistry::start().await.unwrap();
    let manifest = registry.push_image("team/busybox", "1", &image).unwrap();
    assert_eq!(manifest, image.manifest_digest);

    let store = ImageStore::open(&work.path().join("by-tag")).unwrap();
    let reference = registry.reference("team/busybox:1");
    let pulled = ensure_anonymous(&store, &reference, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    assert_eq!(pulled.id, image.id);
    assert_eq!(pulled.reference, reference);
    assert_eq!(
        pulled.repo_digest,
        Some(format!(
            "{}/team/busybox@{}",
            registry.host(),
            image.manifest_digest
        ))
    );
    assert_unpacked_test_image(&pulled, "default");
    // The digest reference was recorded too: resolving it needs no network.
    let before = registry.requests();
    let by_digest = ensure_anonymous(
        &store,
        pulled.repo_digest.as_deref().unwrap(),
        PullPolicy::Never,
    )
    .await
    .unwrap();
    assert_eq!(by_digest.id, image.id);
    assert_eq!(registry.requests(), before);

    let fresh = ImageStore::open(&work.path().join("by-digest")).unwrap();
    let digest_reference = format!("{}/team/busybox@{}", registry.host(), image.manifest_digest);
    let pulled = ensure_anonymous(&fresh, &digest_reference, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    assert_eq!(pulled.id, image.id);
    assert_eq!(pulled.reference, digest_reference);
    assert_unpacked_test_image(&pulled, "default");
    assert!(
        dir_entries(&work.path().join("by-digest/tmp")).is_empty(),
        "downloads are cleaned up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_picks_linux_amd64_from_a_multi_arch_index() {
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(&work.path().join("build"), "localhost/multi:1").unwrap();
    let registry = TestRegistry::start().await.unwrap();
    let index = registry.push_multi_arch("multi", "1", &image).unwrap();
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let pulled = ensure_anonymous(&store, &registry.reference("multi:1"), PullPolicy::Always)
        .await
        .unwrap();
    assert_eq!(pulled.id, image.id);
    assert_unpacked_test_image(&pulled, "default");
    // By the index digest as well.
    let by_index = ensure_anonymous(
        &store,
        &format!("{}/multi@{index}", registry.host()),
        PullPolicy::IfNotPresent,
    )
    .await
    .unwrap();
    assert_eq!(by_index.id, image.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_error_carries_the_registry_message() {
    let work = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start().await.unwrap();
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let err = ensure_anonymous(
        &store,
        &registry.reference("nope:1"),
        PullPolicy::IfNotPresent,
    )
    .await
    .unwrap_err();
    match &err {
        ImageError::NotFound { reference, message } => {
            assert_eq!(reference, &registry.reference("nope:1"));
            assert_eq!(message, "MANIFEST_UNKNOWN: manifest unknown");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(err.kubelet_reason(), "ErrImagePull");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("manifest unknown"), "{err}");
    assert!(store.images().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_registry_is_a_transient_error() {
    let work = tempfile::tempdir().unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let err = ensure_anonymous(
        &store,
        &format!("127.0.0.1:{port}/gone:1"),
        PullPolicy::IfNotPresent,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().to_lowercase().contains("connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_policy_with_a_missing_image_is_err_image_never_pull() {
    let work = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start().await.unwrap();
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let err = ensure_anonymous(&store, &registry.reference("absent:1"), PullPolicy::Never)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NeverPull { .. }), "{err:?}");
    assert_eq!(err.kubelet_reason(), "ErrImageNeverPull");
    assert_eq!(registry.requests(), 0, "Never must not ask the registry");
    let invalid = ensure_anonymous(&store, "Not A Name", PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert_eq!(invalid.kubelet_reason(), "InvalidImageName");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_not_present_uses_the_cache_and_always_asks_the_registry() {
    let work = tempfile::tempdir().unwrap();
    let (_, registry, store) = served_test_image(work.path(), "cached", "1").await;
    let reference = registry.reference("cached:1");
    let first = ensure_anonymous(&store, &reference, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    let after_pull = registry.requests();
    assert!(after_pull > 0);

    let again = ensure_anonymous(&store, &reference, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    assert_eq!(again, first);
    let never = ensure_anonymous(&store, &reference, PullPolicy::Never)
        .await
        .unwrap();
    assert_eq!(never, first);
    assert_eq!(
        registry.requests(),
        after_pull,
        "a cached image must not touch the network"
    );

    // Always resolves the manifest again but downloads no blob for an unchanged image.
    let base_inode = fs::metadata(&first.layers[0]).unwrap().ino();
    let always = ensure_anonymous(&store, &reference, PullPolicy::Always)
        .await
        .unwrap();
    assert_eq!(always.id, first.id);
    let asked = registry.requests() - after_pull;
    assert!(
        (1..=2).contains(&asked),
        "Always re-resolves only the manifest ({asked} requests)"
    );
    assert_eq!(fs::metadata(&always.layers[0]).unwrap().ino(), base_inode);

    // With the tag gone upstream, Always fails with the registry's word; IfNotPresent still works.
    registry.delete_tag("cached", "1");
    let err = ensure_anonymous(&store, &reference, PullPolicy::Always)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
    assert_eq!(
        ensure_anonymous(&store, &reference, PullPolicy::IfNotPresent)
            .await
            .unwrap(),
        first
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_shared_by_two_images_is_downloaded_and_unpacked_once() {
    let work = tempfile::tempdir().unwrap();
    let one = variant(&work.path().join("one"), "localhost/shared:one", "one");
    let two = variant(&work.path().join("two"), "localhost/shared:two", "two");
    let registry = TestRegistry::start().await.unwrap();
    registry.push_image("shared", "one", &one).unwrap();
    registry.push_image("shared", "two", &two).unwrap();
    let store = ImageStore::open(&work.path().join("images")).unwrap();

    let first = ensure_anonymous(
        &store,
        &registry.reference("shared:one"),
        PullPolicy::IfNotPresent,
    )
    .await
    .unwrap();
    let base_inode = fs::metadata(&first.layers[0]).unwrap().ino();
    // Corrupt the shared blob upstream: the second pull must not download it at all.
    registry.corrupt_blob(&one.layer_digests[0]).unwrap();
    let second = ensure_anonymous(
        &store,
        &registry.reference("shared:two"),
        PullPolicy::IfNotPresent,
    )
    .await
    .unwrap();
    assert_eq!(first.layers[0], second.layers[0]);
    assert_ne!(first.layers[1], second.layers[1]);
    assert_eq!(
        fs::metadata(&second.layers[0]).unwrap().ino(),
        base_inode,
        "base layer not unpacked again"
    );
    assert_unpacked_test_image(&second, "two");
    assert_eq!(
        dir_entries(&work.path().join("images/layers/sha256")).len(),
        3
    );
    assert_eq!(store.usage().unwrap().layers, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ensures_of_one_image_are_safe() {
    let work = tempfile::tempdir().unwrap();
    let (_, registry, store) = served_test_image(work.path(), "race", "1").await;
    let reference = registry.reference("race:1");

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, reference) = (store.clone(), reference.clone());
            tokio::spawn(async move {
                ensure_anonymous(&store, &reference, PullPolicy::IfNotPresent).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap());
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    assert_unpacked_test_image(&results[0], "default");
    assert_eq!(
        dir_entries(&work.path().join("images/layers/sha256")).len(),
        2
    );
    assert!(dir_entries(&work.path().join("images/tmp")).is_empty());
    // A second store over the same directory (another process, say) sees the same image.
    let other = ImageStore::open(&work.path().join("images")).unwrap();
    assert_eq!(other.lookup(&reference).unwrap().unwrap(), results[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_blob_from_the_registry_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let (image, registry, store) = served_test_image(work.path(), "bad", "1").await;
    registry.corrupt_blob(&image.layer_digests[1]).unwrap();
    let err = ensure_anonymous(
        &store,
        &registry.reference("bad:1"),
        PullPolicy::IfNotPresent,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    assert!(store.images().unwrap().is_empty(), "nothing recorded");
    assert!(
        !work
            .path()
            .join("images/layers/sha256")
            .join(image.diff_ids[1].hex())
            .exists()
    );

    registry.corrupt_blob(&image.config_digest).unwrap();
    let err = ensure_anonymous(
        &store,
        &registry.reference("bad:1"),
        PullPolicy::IfNotPresent,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth() {
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(&work.path().join("build"), "localhost/private:1").unwrap();
    let registry = TestRegistry::start_with_auth("alice", "s3cret")
        .await
        .unwrap();
    registry.push_image("private", "1", &image).unwrap();
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let reference = registry.reference("private:1");

    let err = ensure_anonymous(&store, &reference, PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    let wrong = RegistryAuth::Basic {
        username: "alice".into(),
        password: "wrong".into(),
    };
    let err = store
        .ensure(&reference, PullPolicy::IfNotPresent, &wrong)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");

    let right = RegistryAuth::Basic {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    let pulled = store
        .ensure(&reference, PullPolicy::IfNotPresent, &right)
        .await
        .unwrap();
    assert_eq!(pulled.id, image.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_localhost_registry_named_as_insecure() {
    // Tests may only reach loopback, so this covers the `localhost` spelling (host name, not
    // an IP) listed in the options, which must select plain HTTP.
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(&work.path().join("build"), "localhost/opt:1").unwrap();
    let registry = TestRegistry::start().await.unwrap();
    registry.push_image("opt", "1", &image).unwrap();
    let port = registry.host().rsplit(':').next().unwrap().to_string();
    let store = ImageStore::open_with(
        &work.path().join("images"),
        StoreOptions {
            insecure_registries: vec![format!("localhost:{port}")],
        },
    )
    .unwrap();
    let pulled = ensure_anonymous(
        &store,
        &format!("localhost:{port}/opt:1"),
        PullPolicy::IfNotPresent,
    )
    .await
    .unwrap();
    assert_eq!(pulled.id, image.id);
}

/// Unmounts a test mount however the test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let status = std::process::Command::new("umount").arg(&self.0).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not unmount {}", self.0.display());
        }
    }
}

#[test]
fn unpacked_layers_stack_as_overlayfs_lower_dirs() {
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(&work.path().join("build"), "localhost/overlay:1").unwrap();
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    store
        .import(&image.oci_archive, None, &ProgressBar::hidden())
        .unwrap();
    let resolved = store.lookup("localhost/overlay:1").unwrap().unwrap();

    let merged = work.path().join("merged");
    fs::create_dir(&merged).unwrap();
    // overlayfs lists lower directories top first.
    let lower: Vec<String> = resolved
        .layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", lower.join(":")))
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success(), "mounting the layers as overlayfs");
    let _unmount = Unmount(merged.clone());

    assert!(
        !merged.join("etc/doomed").exists(),
        "the whiteout hides the lower file"
    );
    assert!(merged.join("etc/passwd").is_file());
    assert!(merged.join("var/cache/fresh.txt").is_file());
    assert!(
        !merged.join("var/cache/old").exists(),
        "the opaque directory hides the lower tree"
    );
    let output = std::process::Command::new(merged.join("bin/busybox"))
        .args(["cat"])
        .arg(merged.join("usr/share/hello-link.txt"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello from the visor test image\n"
    );
}
