//! The `visor image …` commands, as functions the binary calls: import a file, list, remove.
//!
//! All are synchronous (plain filesystem work); call them from a blocking context. They open
//! the cache at `AGENT_DATA_DIR/images`, the directory the agent uses, so an image imported
//! here is what the agent's pods run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::store::{ImageStore, ImageSummary};

/// The image cache directory inside an agent's data directory.
pub fn images_dir(agent_data_dir: &Path) -> PathBuf {
    agent_data_dir.join("images")
}

/// `visor image import FILE [--data-dir AGENT_DIR] [--tag REF]`: imports an OCI layout (dir or
/// tar) or a `docker save` archive into the agent's cache, with a byte progress bar on stderr
/// when it is a terminal, then prints each image's references and ID on stdout.
pub fn import_command(
    file: &Path,
    data_dir: &Path,
    reference: Option<String>,
) -> anyhow::Result<()> {
    let store = ImageStore::open(&images_dir(data_dir))
        .with_context(|| format!("opening the image cache in {}", data_dir.display()))?;
    let progress = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    progress.set_message("importing");
    progress.enable_steady_tick(Duration::from_millis(200));
    let result = store.import(file, reference.as_deref(), &progress);
    progress.finish_and_clear();
    let images = result.with_context(|| format!("importing {}", file.display()))?;
    for image in images {
        if image.references.is_empty() {
            println!("Loaded image ID: {}", image.id);
        }
        for reference in &image.references {
            println!("Loaded image: {reference} ({})", image.id);
        }
    }
    Ok(())
}

/// `visor image list [--data-dir AGENT_DIR]`: prints REFERENCE, IMAGE ID and SIZE for every
/// cached image (one row per tag; `<none>` for an image with no tag left).
pub fn list(data_dir: &Path) -> anyhow::Result<()> {
    let store = ImageStore::open(&images_dir(data_dir))
        .with_context(|| format!("opening the image cache in {}", data_dir.display()))?;
    print!("{}", format_image_table(&store.images()?));
    Ok(())
}

/// `visor image rm REF [--data-dir AGENT_DIR]`: untags `reference` (a reference or a full
/// `sha256:` image ID) and deletes the image once no tag is left.
pub fn remove_command(reference: &str, data_dir: &Path) -> anyhow::Result<()> {
    let store = ImageStore::open(&images_dir(data_dir))
        .with_context(|| format!("opening the image cache in {}", data_dir.display()))?;
    match store.remove(reference)? {
        Some(id) => println!("Deleted: {id}"),
        None => println!("Untagged: {reference}"),
    }
    Ok(())
}

/// The table `list` prints: a header and one row per tag, columns padded to fit.
pub fn format_image_table(images: &[ImageSummary]) -> String {
    let mut rows = vec![[
        "REFERENCE".to_string(),
        "IMAGE ID".to_string(),
        "SIZE".to_string(),
    ]];
    for image in images {
        let size = HumanBytes(image.size).to_string();
        if image.references.is_empty() {
            let name = image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| "<none>".to_string());
            rows.push([name, image.id.short().to_string(), size.clone()]);
        }
        for reference in &image.references {
            rows.push([
                reference.clone(),
                image.id.short().to_string(),
                size.clone(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..2)
        .map(|col| rows.iter().map(|r| r[col].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        out.push_str(&format!(
            "{:<w0$}   {:<w1$}   {}\n",
            row[0],
            row[1],
            row[2],
            w0 = widths[0],
            w1 = widths[1]
        ));
    }
    out
}
