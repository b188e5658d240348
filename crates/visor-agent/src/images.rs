//! The pod workers' view of images: the host's image store ([`visor_images`]) behind the
//! [`ImageResolver`] interface, and the nothing that simulated hosts need.

use async_trait::async_trait;

use crate::pods::{ImageError, ImageResolver};
use crate::runtime::ResolvedImage;

/// Simulated hosts run nothing, so they pull nothing: an image resolves to its name.
pub struct NoImages;

#[async_trait]
impl ImageResolver for NoImages {
    async fn resolve(
        &self,
        reference: &str,
        _pull_policy: &str,
        _pull_secrets: &[Vec<u8>],
    ) -> Result<ResolvedImage, ImageError> {
        Ok(ResolvedImage {
            reference: reference.to_string(),
            id: format!("sim://{reference}"),
            ..Default::default()
        })
    }
}

/// The host's image cache.
pub struct Images {
    store: visor_images::ImageStore,
}

impl Images {
    /// Opens (creating) the cache in `dir`; `insecure_registries` are reached over plain HTTP.
    pub fn open(dir: &std::path::Path, insecure_registries: &[String]) -> anyhow::Result<Self> {
        let store = visor_images::ImageStore::open_with(
            dir,
            visor_images::StoreOptions {
                insecure_registries: insecure_registries.to_vec(),
            },
        )?;
        Ok(Images { store })
    }
}

#[async_trait]
impl ImageResolver for Images {
    async fn resolve(
        &self,
        reference: &str,
        pull_policy: &str,
        pull_secrets: &[Vec<u8>],
    ) -> Result<ResolvedImage, ImageError> {
        let policy: visor_images::PullPolicy = pull_policy.parse().map_err(ImageError::Pull)?;
        // The first pull secret that names the image's registry authenticates the pull.
        let registry = visor_images::ImageReference::parse(reference)
            .map(|r| r.registry().to_string())
            .map_err(|e| ImageError::Pull(e.to_string()))?;
        let auth = pull_secrets
            .iter()
            .find_map(|config| {
                visor_images::RegistryAuth::from_docker_config(config, &registry)
                    .ok()
                    .flatten()
            })
            .unwrap_or_default();
        match self.store.ensure(reference, policy, &auth).await {
            Ok(image) => Ok(ResolvedImage {
                reference: image.reference,
                id: image
                    .repo_digest
                    .unwrap_or_else(|| image.id.as_str().to_string()),
                layers: image.layers,
                config: crate::runtime::ImageConfig {
                    entrypoint: image.entrypoint,
                    cmd: image.cmd,
                    env: image.env,
                    working_dir: image.working_dir,
                    user: image.user,
                },
            }),
            Err(e @ visor_images::ImageError::NeverPull { .. }) => {
                Err(ImageError::NeverPull(e.to_string()))
            }
            Err(e) => Err(ImageError::Pull(e.to_string())),
        }
    }
}
