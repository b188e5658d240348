//! Token signing keys and signed tokens (JWTs, ES256), shared by login tokens and
//! service-account tokens.
//!
//! Keys live in `DATA_DIR/keys/`:
//!
//! | file          | what                                                   | mode |
//! |---------------|--------------------------------------------------------|------|
//! | `KID.key`     | the private key (PKCS#8 PEM) of the current signing key | 0600 |
//! | `KID.pub`     | a public key (SPKI PEM); kept for every key ever used   | 0644 |
//! | `current`     | the key id new tokens are signed with                   | 0600 |
//!
//! Rotation ([`KeySet::rotate`]) creates a new key, makes it current and deletes the old
//! private keys, keeping their public halves so tokens signed before the rotation stay valid
//! until they expire. A token names its key in the JWT header (`kid`); a token whose key is
//! unknown is refused.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::{KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};

use super::write_atomic;

const KEYS_DIR: &str = "keys";
const CURRENT: &str = "current";

/// The claims of every token Visor signs. Login tokens carry `visor.io`, service-account
/// tokens `kubernetes.io` (as upstream's).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(
        rename = "kubernetes.io",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes: Option<KubernetesClaim>,
    #[serde(rename = "visor.io", default, skip_serializing_if = "Option::is_none")]
    pub visor: Option<VisorClaim>,
}

/// Upstream's private claim of service-account tokens.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The private claim of login tokens: which identity provider vouched for the user, and the
/// user's uid there (so a deleted and re-created user does not inherit old tokens).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VisorClaim {
    pub provider: String,
    pub uid: String,
}

/// Why a token was refused. Never shown to clients (they all get the same 401); for debug
/// logs, and never containing the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("not a signed token: {0}")]
    Malformed(String),
    #[error("signed by an unknown key")]
    UnknownKey,
    #[error("rejected: {0}")]
    Rejected(String),
}

/// The signing key and every known verification key.
pub struct KeySet {
    current_kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for KeySet {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("current_kid", &self.current_kid)
            .field("verification_keys", &self.decoding.len())
            .finish_non_exhaustive()
    }
}

fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(KEYS_DIR)
}

fn new_kid() -> String {
    let now = jiff::Timestamp::now().as_second();
    format!("k{now}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

impl KeySet {
    /// Loads `DATA_DIR/keys/`, creating the first key when there is none.
    ///
    /// Guarantees: the private key file is written with mode 0600 and atomically; a key id
    /// named by `current` whose private key is missing is an error, never silently replaced
    /// (that would invalidate every token issued).
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<KeySet> {
        let dir = keys_dir(data_dir);
        if !dir.join(CURRENT).exists() {
            Self::rotate(data_dir)?;
        }
        Self::load(data_dir)
    }

    /// Loads the keys without creating any.
    pub fn load(data_dir: &Path) -> anyhow::Result<KeySet> {
        let dir = keys_dir(data_dir);
        let current = fs::read_to_string(dir.join(CURRENT))
            .with_context(|| format!("reading {}", dir.join(CURRENT).display()))?;
        let current_kid = current.trim().to_string();
        let private = dir.join(format!("{current_kid}.key"));
        let pem = fs::read(&private).with_context(|| format!("reading {}", private.display()))?;
        let encoding = EncodingKey::from_ec_pem(&pem)
            .with_context(|| format!("parsing {}", private.display()))?;
        let mut decoding = HashMap::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let Some(kid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pub"))
            else {
                continue;
            };
            let pem = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let key = DecodingKey::from_ec_pem(&pem)
                .with_context(|| format!("parsing {}", path.display()))?;
            decoding.insert(kid.to_string(), key);
        }
        if !decoding.contains_key(&current_kid) {
            bail!(
                "{} has no public key {current_kid}.pub beside it",
                dir.display()
            );
        }
        Ok(KeySet {
            current_kid,
            encoding,
            decoding,
        })
    }

    /// Creates a new signing key and makes it current; returns its id. Old private keys are
    /// deleted, old public keys kept for verification. A running server picks the new key up
    /// when it next starts.
    pub fn rotate(data_dir: &Path) -> anyhow::Result<String> {
        let dir = keys_dir(data_dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting permissions of {}", dir.display()))?;
        let key = KeyPair::generate().context("generating a signing key")?;
        let kid = new_kid();
        let public_pem = public_key_pem(&key);
        write_atomic(
            &dir.join(format!("{kid}.pub")),
            public_pem.as_bytes(),
            0o644,
        )?;
        write_atomic(
            &dir.join(format!("{kid}.key")),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_atomic(&dir.join(CURRENT), kid.as_bytes(), 0o600)?;
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".key") && name != format!("{kid}.key") {
                fs::remove_file(&path)
                    .with_context(|| format!("removing the retired key {}", path.display()))?;
            }
        }
        tracing::info!(kid, "new token signing key");
        Ok(kid)
    }

    /// Signs `claims` with the current key.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.current_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).context("signing a token")
    }

    /// Verifies a token's signature, issuer, audience (one of `audiences`), expiry and
    /// not-before (with a minute of leeway for clock skew, as upstream) and returns its claims.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audiences: &[String],
    ) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::Rejected(format!("algorithm {:?}", header.alg)));
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.decoding.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(audiences);
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Rejected(e.to_string()))
    }

    pub fn current_kid(&self) -> &str {
        &self.current_kid
    }
}

/// Whether a bearer credential has the shape of a JWT (three base64url parts), so that the
/// authenticator tries the signature check only on those.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn public_key_pem(key: &KeyPair) -> String {
    use base64::Engine as _;
    let der = key.subject_public_key_info();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(aud: &str, exp_in: i64) -> Claims {
        let now = jiff::Timestamp::now().as_second();
        Claims {
            iss: "visor".into(),
            sub: "alice".into(),
            aud: vec![aud.into()],
            exp: now + exp_in,
            nbf: now - 5,
            iat: now,
            jti: "j".into(),
            ..Claims::default()
        }
    }

    #[test]
    fn tokens_verify_across_rotation_and_fail_when_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeySet::load_or_create(dir.path()).unwrap();
        let audiences = vec!["api".to_string()];
        let token = keys.sign(&claims("api", 600)).unwrap();
        assert_eq!(
            keys.verify(&token, "visor", &audiences).unwrap().sub,
            "alice"
        );
        // Wrong audience, wrong issuer, expired, tampered.
        let other = keys.sign(&claims("other", 600)).unwrap();
        assert!(keys.verify(&other, "visor", &audiences).is_err());
        assert!(keys.verify(&token, "someone-else", &audiences).is_err());
        let expired = keys.sign(&claims("api", -3600)).unwrap();
        assert!(keys.verify(&expired, "visor", &audiences).is_err());
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = parts[1].replace('a', "b").replace('A', "a");
        assert!(keys.verify(&parts.join("."), "visor", &audiences).is_err());

        // After a rotation the old token still verifies, new ones use the new key, and the
        // old private key is gone.
        let old_kid = keys.current_kid().to_string();
        KeySet::rotate(dir.path()).unwrap();
        let rotated = KeySet::load(dir.path()).unwrap();
        assert_ne!(rotated.current_kid(), old_kid);
        assert!(rotated.verify(&token, "visor", &audiences).is_ok());
        assert!(!dir.path().join(format!("keys/{old_kid}.key")).exists());
        let mode = fs::metadata(
            dir.path()
                .join(format!("keys/{}.key", rotated.current_kid())),
        )
        .unwrap()
        .permissions()
        .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A key set that never saw the signing key refuses the token.
        let elsewhere = tempfile::tempdir().unwrap();
        let stranger = KeySet::load_or_create(elsewhere.path()).unwrap();
        assert!(matches!(
            stranger.verify(&token, "visor", &audiences),
            Err(TokenError::UnknownKey)
        ));
    }
}
