//! The image cache's error type: what failed, kept apart by what the caller should do about it.
//!
//! A pod's image error is shown to a person (`ErrImagePull` with the registry's message) and
//! decides whether the agent retries soon (a network blip) or backs off (a missing image), so
//! the variants separate "the registry said no" from "we could not reach it" from "the data was
//! wrong".

use std::path::PathBuf;

/// Everything that can go wrong in the image cache.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse as an image name (upstream's `InvalidImageName`).
    #[error("invalid image reference {reference:?}: {message}")]
    InvalidReference { reference: String, message: String },

    /// The registry says the image (manifest, repository or blob) does not exist. `message` is
    /// the registry's own wording, e.g. `MANIFEST_UNKNOWN: manifest unknown`.
    #[error("pulling {reference}: not found: {message}")]
    NotFound { reference: String, message: String },

    /// The registry refused our credentials, or wants some we did not give.
    #[error("pulling {reference}: unauthorized: {message}")]
    Unauthorized { reference: String, message: String },

    /// The pull policy is `Never` and the image is not in the cache (upstream's
    /// `ErrImageNeverPull`).
    #[error("container image {reference:?} is not present with pull policy of Never")]
    NeverPull { reference: String },

    /// The registry could not be reached or answered with a server-side failure (connection
    /// refused, timeout, 5xx, 429). Retrying later may succeed.
    #[error("pulling {reference}: registry unavailable: {message}")]
    Unavailable { reference: String, message: String },

    /// The registry answered with an error that is neither "not found" nor "unauthorized".
    #[error("pulling {reference}: registry error: {message}")]
    Registry { reference: String, message: String },

    /// Content did not hash to the digest it was named by.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// The image is malformed or uses something this cache does not support (bad JSON, layer
    /// count not matching the config, a path escaping the layer, no linux/amd64 variant, …).
    #[error("invalid image {what}: {message}")]
    InvalidImage { what: String, message: String },

    /// The reference is not in the cache (for `remove` and lookups).
    #[error("image {reference:?} is not in the cache")]
    NotCached { reference: String },

    /// A filesystem operation failed.
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// The reason upstream's kubelet would put in a waiting container's status for this error:
    /// `InvalidImageName`, `ErrImageNeverPull` or `ErrImagePull`.
    pub fn kubelet_reason(&self) -> &'static str {
        match self {
            ImageError::InvalidReference { .. } => "InvalidImageName",
            ImageError::NeverPull { .. } => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }

    /// True when trying again later may succeed without anyone changing anything: the registry
    /// was unreachable or overloaded, or a local filesystem operation failed. "Not found",
    /// "unauthorized", bad digests and bad images need a person.
    pub fn is_transient(&self) -> bool {
        matches!(self, ImageError::Unavailable { .. } | ImageError::Io { .. })
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImageError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        ImageError::InvalidImage {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// `error` and its sources, joined with `: ` (skipping a source already quoted by its parent).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;
