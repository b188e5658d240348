//! Join tokens: upstream's bootstrap tokens, with which a host's agent obtains its
//! credentials (`POST /join`, see [`super::join`]).
//!
//! A token is `ID.SECRET` (`[a-z0-9]{6}.[a-z0-9]{16}`) stored as a Secret
//! `kube-system/bootstrap-token-ID` of type `bootstrap.kubernetes.io/token` with data
//! `token-id`, `token-secret`, `usage-bootstrap-authentication: "true"`, optionally
//! `expiration` (RFC 3339) and `description` — the same layout as upstream, so kubeadm-style
//! tooling recognises it.
//!
//! At start the server makes sure one token exists and writes it to `DATA_DIR/agent-token`
//! (mode 0600) for the local agent; it reuses that file's token on later starts as long as
//! its Secret still exists.

use std::path::Path;

use anyhow::Context;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::registry::{Registry, Scope};
use crate::request::Query;

pub const TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const TOKEN_NAMESPACE: &str = "kube-system";
pub const TOKEN_SECRET_PREFIX: &str = "bootstrap-token-";
/// The file, in the data directory, holding the token the local agent joins with.
pub const AGENT_TOKEN_FILE: &str = "agent-token";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A parsed join token. Its `Debug` form hides the secret half.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({}.****)", self.id)
    }
}

impl JoinToken {
    /// A new random token.
    pub fn generate() -> anyhow::Result<JoinToken> {
        let mut bytes = [0u8; ID_LEN + SECRET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| anyhow::anyhow!("no randomness for a token"))?;
        // 252 is the largest multiple of 36 below 256; rejecting above it would avoid a tiny
        // bias, which at 36^16 possible secrets does not matter.
        let text: String = bytes
            .iter()
            .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
            .collect();
        Ok(JoinToken {
            id: text[..ID_LEN].to_string(),
            secret: text[ID_LEN..].to_string(),
        })
    }

    /// Parses `ID.SECRET`; `None` unless it has exactly upstream's shape.
    pub fn parse(text: &str) -> Option<JoinToken> {
        let (id, secret) = text.trim().split_once('.')?;
        let ok = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        (ok(id, ID_LEN) && ok(secret, SECRET_LEN)).then(|| JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// `ID.SECRET`, for the one place it must be shown (the file, the CLI's output).
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    pub fn secret_name(&self) -> String {
        format!("{TOKEN_SECRET_PREFIX}{}", self.id)
    }

    /// The Secret that makes this token valid. `expiration` is RFC 3339.
    pub fn to_secret(&self, expiration: Option<&str>, description: Option<&str>) -> Value {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut data = json!({
            "token-id": b64(&self.id),
            "token-secret": b64(&self.secret),
            "usage-bootstrap-authentication": b64("true"),
        });
        if let Some(expiration) = expiration {
            data["expiration"] = json!(b64(expiration));
        }
        if let Some(description) = description {
            data["description"] = json!(b64(description));
        }
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": self.secret_name(), "namespace": TOKEN_NAMESPACE },
            "type": TOKEN_SECRET_TYPE,
            "data": data,
        })
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn field(secret: &Value, name: &str) -> Option<String> {
    super::users::secret_field(secret, name)
}

/// Whether `secret` (a stored Secret) makes `token` valid now: right type, usable for
/// authentication, same id and secret (compared in constant time), not expired, not being
/// deleted.
pub fn secret_accepts(secret: &Value, token: &JoinToken, now: jiff::Timestamp) -> bool {
    if secret["type"].as_str() != Some(TOKEN_SECRET_TYPE) || crate::object::is_deleting(secret) {
        return false;
    }
    if field(secret, "usage-bootstrap-authentication").as_deref() != Some("true")
        || field(secret, "token-id").as_deref() != Some(token.id.as_str())
    {
        return false;
    }
    let stored = field(secret, "token-secret").unwrap_or_default();
    if !constant_time_eq(stored.as_bytes(), token.secret.as_bytes()) {
        return false;
    }
    match field(secret, "expiration") {
        None => true,
        Some(at) => at
            .parse::<jiff::Timestamp>()
            .is_ok_and(|expires| expires > now),
    }
}

/// Checks a join token against the Secrets in the watch cache.
pub fn verify(registry: &Registry, token: &JoinToken) -> bool {
    let key = format!(
        "/registry/core/secrets/{TOKEN_NAMESPACE}/{}",
        token.secret_name()
    );
    registry
        .cache
        .get(&key)
        .is_some_and(|stored| secret_accepts(&stored.value(), token, jiff::Timestamp::now()))
}

/// Makes sure the local agent has a valid join token in `DATA_DIR/agent-token`: keeps the
/// file's token if its Secret still accepts it, otherwise creates a new token (no expiry)
/// and rewrites the file. Idempotent.
pub async fn ensure_agent_token(registry: &Registry, data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(AGENT_TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some(token) = JoinToken::parse(&text)
        && verify(registry, &token)
    {
        return Ok(());
    }
    let token = JoinToken::generate()?;
    let def = registry
        .catalog
        .lookup("", "v1", "secrets")
        .context("secrets are served")?;
    let scope = Scope {
        def,
        namespace: Some(TOKEN_NAMESPACE.to_string()),
    };
    registry
        .create(
            &scope,
            token.to_secret(None, Some("join token of the server's own agent")),
            &Query::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating the agent's join token: {e}"))?;
    super::write_atomic(&path, format!("{}\n", token.reveal()).as_bytes(), 0o600)?;
    tracing::info!(token_id = %token.id, path = %path.display(), "created the agent's join token");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_upstream_shape_and_validate() {
        let token = JoinToken::generate().unwrap();
        let text = token.reveal();
        assert_eq!(JoinToken::parse(&text), Some(token.clone()));
        assert!(!format!("{token:?}").contains(&token.secret));
        for bad in [
            "abcdef.0123456789abcdef0",
            "abcde.0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef0123456789abcdef",
            "",
        ] {
            assert!(JoinToken::parse(bad).is_none(), "{bad}");
        }
        let now = jiff::Timestamp::now();
        let secret = token.to_secret(None, Some("d"));
        assert!(secret_accepts(&secret, &token, now));
        let wrong = JoinToken {
            id: token.id.clone(),
            secret: "0000000000000000".into(),
        };
        assert!(!secret_accepts(&secret, &wrong, now));
        let expired = token.to_secret(Some("2020-01-01T00:00:00Z"), None);
        assert!(!secret_accepts(&expired, &token, now));
        let later = token.to_secret(Some("2999-01-01T00:00:00Z"), None);
        assert!(secret_accepts(&later, &token, now));
        let mut unusable = secret.clone();
        unusable["data"]["usage-bootstrap-authentication"] = json!("ZmFsc2U=");
        assert!(!secret_accepts(&unusable, &token, now));
    }
}
