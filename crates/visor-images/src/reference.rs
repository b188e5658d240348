//! Image references, normalised the way Docker and the kubelet do.
//!
//! `busybox` is `docker.io/library/busybox:latest`, `me/app` is `docker.io/me/app:latest`,
//! `127.0.0.1:5000/app` keeps its registry. A reference with a digest names that digest only: a
//! tag next to it is dropped, as upstream resolves `repo:tag@sha256:…` by the digest alone.
//! The parsing itself is `oci-spec`'s port of Docker's `reference` package.

use std::fmt;

use oci_client::Reference;

use crate::digest::Digest;
use crate::error::{ImageError, Result};

/// A parsed, normalised image reference: a repository plus either a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageReference {
    registry: String,
    repository: String,
    target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Tag(String),
    Digest(Digest),
}

impl ImageReference {
    /// Parses and normalises `text`; an invalid name is `ImageError::InvalidReference`.
    pub fn parse(text: &str) -> Result<ImageReference> {
        let invalid = |message: String| ImageError::InvalidReference {
            reference: text.to_string(),
            message,
        };
        let parsed: Reference = text.trim().parse().map_err(|e| invalid(format!("{e}")))?;
        // Docker's rule, which the parser leaves out: repositories are lower case.
        if parsed.repository().chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase".to_string()));
        }
        let target = match (parsed.digest(), parsed.tag()) {
            (Some(digest), _) => {
                Target::Digest(Digest::parse(digest).map_err(|e| invalid(e.to_string()))?)
            }
            (None, Some(tag)) => Target::Tag(tag.to_string()),
            (None, None) => Target::Tag("latest".to_string()),
        };
        Ok(ImageReference {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            target,
        })
    }

    /// The same repository at `digest`.
    pub fn with_digest(&self, digest: &Digest) -> ImageReference {
        ImageReference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            target: Target::Digest(digest.clone()),
        }
    }

    /// The registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, when the reference names one.
    pub fn tag(&self) -> Option<&str> {
        match &self.target {
            Target::Tag(tag) => Some(tag),
            Target::Digest(_) => None,
        }
    }

    /// The manifest digest, when the reference names one.
    pub fn digest(&self) -> Option<&Digest> {
        match &self.target {
            Target::Digest(digest) => Some(digest),
            Target::Tag(_) => None,
        }
    }

    /// The reference as `oci-client` wants it.
    pub(crate) fn to_oci(&self) -> Reference {
        match &self.target {
            Target::Tag(tag) => {
                Reference::with_tag(self.registry.clone(), self.repository.clone(), tag.clone())
            }
            Target::Digest(digest) => Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                digest.to_string(),
            ),
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(tag) => write!(f, "{}/{}:{tag}", self.registry, self.repository),
            Target::Digest(digest) => write!(f, "{}/{}@{digest}", self.registry, self.repository),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let digest = Digest::of(b"x");
        for (input, expected) in [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".to_string()),
            ("me/app", "docker.io/me/app:latest".to_string()),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".to_string(),
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest".to_string(),
            ),
            (
                "127.0.0.1:5000/team/app:v1",
                "127.0.0.1:5000/team/app:v1".to_string(),
            ),
            ("localhost/app", "localhost/app:latest".to_string()),
            (
                &format!("busybox@{digest}"),
                format!("docker.io/library/busybox@{digest}"),
            ),
            (
                &format!("busybox:1.36@{digest}"),
                format!("docker.io/library/busybox@{digest}"),
            ),
        ] {
            assert_eq!(
                ImageReference::parse(input).unwrap().to_string(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "",
            "UPPER/case",
            "busybox@sha256:123",
            "a b",
            "busybox@md5:abc",
        ] {
            let err = ImageReference::parse(bad).unwrap_err();
            assert_eq!(err.kubelet_reason(), "InvalidImageName", "{bad}: {err}");
        }
    }
}
