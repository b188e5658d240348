//! A host's content-addressed OCI image cache.
//!
//! The agent asks [`ImageStore::ensure`] for an image by reference and pull policy and gets
//! back a [`ResolvedImage`]: the image ID, the unpacked layer directories (ready to be stacked
//! as overlayfs lower directories) and the config's entrypoint, command, environment, working
//! directory and user. Images come from an OCI distribution registry (pulled with
//! `oci-client`) or from files ([`ImageStore::import`]: OCI layouts, `docker save` archives).
//!
//! Modules:
//! - [`store`]: the on-disk layout, the index of references, atomic layer commits, removal;
//! - [`pull`]: registry pulls, pull policies, credentials, error classification;
//! - [`import`]: OCI layout and `docker save` import;
//! - [`unpack`]: one layer tarball → one directory, whiteouts in overlayfs form;
//! - [`reference`](mod@reference), [`digest`]: names and content addresses;
//! - [`cli`]: the `visor image import|list|rm` commands;
//! - `testing` (feature `testing`): a busybox test image built at test time and an in-process
//!   registry, for this crate's tests and other crates' end-to-end tests.

pub mod cli;
pub mod digest;
pub mod error;
pub mod import;
pub mod pull;
pub mod reference;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod unpack;

pub use cli::{format_image_table, images_dir, import_command, list, remove_command};
pub use digest::Digest;
pub use error::ImageError;
pub use import::ImportedImage;
pub use pull::{PullPolicy, RegistryAuth};
pub use reference::ImageReference;
pub use store::{ImageStore, ImageSummary, ResolvedImage, StoreOptions, Usage};
