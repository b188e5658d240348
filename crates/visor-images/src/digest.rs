//! Content digests (`sha256:<64 hex>`) and readers/writers that compute them on the way through.
//!
//! Every byte the cache keeps is named by its digest, so a digest string from outside (a
//! manifest, an index, a file name in a tarball) is parsed here once and only valid ones reach
//! the filesystem — a digest is used as a path component, so anything else would be a path
//! traversal.

use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::error::{ImageError, Result};

/// A validated `sha256:` digest. Other algorithms are refused: OCI images in the wild use
/// sha256, and one algorithm keeps the on-disk layout to one directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Digest> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| {
            ImageError::invalid(
                "digest",
                format!("{text:?} is not a sha256 digest (only sha256 is supported)"),
            )
        })?;
        Digest::from_hex(hex).map_err(|_| {
            ImageError::invalid(
                "digest",
                format!("{text:?} is not sha256: plus 64 lowercase hex digits"),
            )
        })
    }

    /// Builds a digest from its 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<Digest> {
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Digest(format!("sha256:{hex}")))
        } else {
            Err(ImageError::invalid(
                "digest",
                format!("{hex:?} is not 64 lowercase hex digits"),
            ))
        }
    }

    /// The digest of a byte string.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The 64 hex digits, used as the file name in `blobs/sha256/` and `layers/sha256/`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The first 12 hex digits, as `docker images` shows an image ID.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks that `actual` is this digest; `what` names the content in the error.
    pub fn verify(&self, actual: &Digest, what: impl fmt::Display) -> Result<()> {
        if self == actual {
            Ok(())
        } else {
            Err(ImageError::DigestMismatch {
                what: what.to_string(),
                expected: self.0.clone(),
                actual: actual.0.clone(),
            })
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads whatever is left (a tar stream's trailing padding is part of its digest), then
    /// returns the digest and byte count of everything that went through.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            Digest(format!("sha256:{}", hex::encode(self.hasher.finalize()))),
            self.bytes,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The digest and byte count of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (
            Digest(format!("sha256:{}", hex::encode(self.hasher.finalize()))),
            self.bytes,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256_hex() {
        let empty = Digest::of(b"");
        assert_eq!(
            empty.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(empty.as_str()).unwrap(), empty);
        assert_eq!(empty.short(), "e3b0c44298fc");
        for bad in [
            "sha512:abc",
            "sha256:../../etc/passwd",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn hashing_reader_counts_the_rest() {
        let data = b"hello world";
        let mut reader = HashingReader::new(&data[..]);
        let mut first = [0u8; 5];
        reader.read_exact(&mut first).unwrap();
        let (digest, bytes) = reader.finish().unwrap();
        assert_eq!(digest, Digest::of(data));
        assert_eq!(bytes, 11);
    }
}
