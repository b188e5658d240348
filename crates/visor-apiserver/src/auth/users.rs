//! Users and groups: the [`IdentityProvider`] interface, and Visor's own provider
//! ([`LocalUsers`]) that keeps users and groups as Secrets in `kube-system`.
//!
//! Storage: a user is a Secret `kube-system/visor-user-NAME` of type `visor.io/user` with data
//! `username` and `password-hash` (an argon2id PHC string — a password is never stored); a
//! group is a Secret `kube-system/visor-group-NAME` of type `visor.io/group` with data `group`
//! and `members` (one user name per line). Secrets in `kube-system` are readable only by
//! cluster administrators, and both are written through the API (`visor user …`,
//! `visor group …`), so they are audited and authorised like any other write.
//!
//! [`LocalUsers`] follows those Secrets in the watch cache, so checking that a token's user
//! still exists, and which groups it is in now, is a map lookup.
//!
//! Another provider (OIDC, LDAP) implements [`IdentityProvider`] and is registered with the
//! authenticator; nothing else changes.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use futures::StreamExt;
use serde_json::{Value, json};
use visor_store::cache::{CacheEventKind, WatchItem};

use crate::registry::Registry;

/// Where Visor's own users and groups are kept.
pub const IDENTITY_NAMESPACE: &str = "kube-system";
pub const USER_SECRET_TYPE: &str = "visor.io/user";
pub const GROUP_SECRET_TYPE: &str = "visor.io/group";
pub const USER_PREFIX: &str = "visor-user-";
pub const GROUP_PREFIX: &str = "visor-group-";
/// The name of the built-in provider, as recorded in login tokens.
pub const LOCAL_PROVIDER: &str = "visor";
const WATCH_PREFIX: &str = "/registry/core/secrets/kube-system/visor-";
const MAX_NAME: usize = 200;

/// A user an identity provider vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    /// Changes when the user is deleted and created again, so old tokens stop working.
    pub uid: String,
    pub groups: Vec<String>,
}

/// Why a provider could not answer (not "wrong password": that is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
#[error("identity provider {provider}: {message}")]
pub struct ProviderError {
    pub provider: String,
    pub message: String,
}

/// A source of users: checks passwords at login and confirms, on every request that carries
/// a login token, that the user still exists (and with which groups).
#[async_trait::async_trait]
pub trait IdentityProvider: Send + Sync {
    /// The name recorded in the tokens this provider's users get.
    fn name(&self) -> &str;

    /// Checks a user name and password. `Ok(None)` for an unknown user or a wrong password —
    /// the provider must take about as long for both, so timing tells nothing.
    async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<UserInfo>, ProviderError>;

    /// The user as it is now, if it still exists. Called on every request with a login
    /// token: it must be cheap (cached), never a network round trip.
    fn lookup(&self, username: &str) -> Option<UserInfo>;
}

/// Whether `name` may be a Visor user or group name: lower-case letters, digits, `-` and `.`,
/// starting and ending with a letter or digit (it becomes part of a Secret's name), and never
/// `system:…` (reserved for the system's own identities; the colon is excluded anyway).
pub fn valid_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("must be 1 to {MAX_NAME} characters"));
    }
    if !edge(&bytes[0]) || !edge(&bytes[bytes.len() - 1]) {
        return Err("must start and end with a lower-case letter or a digit".into());
    }
    if !bytes.iter().all(|b| edge(b) || matches!(b, b'-' | b'.')) {
        return Err("may contain only lower-case letters, digits, '-' and '.'".into());
    }
    Ok(())
}

fn argon2() -> Argon2<'static> {
    // OWASP's first recommended argon2id setting: 19 MiB, 2 passes, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password as an argon2id PHC string with a random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| anyhow::anyhow!("no randomness for a salt"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

/// Checks a password against an argon2id PHC string. Anything that is not a valid argon2id
/// hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    hash.algorithm == argon2::Algorithm::Argon2id.ident()
        && argon2().verify_password(password.as_bytes(), &hash).is_ok()
}

/// The Secret that stores user `name` with the given password hash.
pub fn user_secret(name: &str, password_hash: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": format!("{USER_PREFIX}{name}"),
            "namespace": IDENTITY_NAMESPACE,
            "labels": { "visor.io/identity": "user" },
        },
        "type": USER_SECRET_TYPE,
        "data": { "username": b64(name), "password-hash": b64(password_hash) },
    })
}

/// The Secret that stores group `name` with `members`.
pub fn group_secret(name: &str, members: &BTreeSet<String>) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let list: Vec<&str> = members.iter().map(String::as_str).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": format!("{GROUP_PREFIX}{name}"),
            "namespace": IDENTITY_NAMESPACE,
            "labels": { "visor.io/identity": "group" },
        },
        "type": GROUP_SECRET_TYPE,
        "data": { "group": b64(name), "members": b64(&list.join("\n")) },
    })
}

/// A Secret's `data[field]`, decoded.
pub fn secret_field(secret: &Value, field: &str) -> Option<String> {
    let encoded = secret.pointer(&format!("/data/{field}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The members listed in a group Secret.
pub fn group_members(secret: &Value) -> BTreeSet<String> {
    secret_field(secret, "members")
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect()
}

struct LocalUser {
    uid: String,
    password_hash: String,
}

#[derive(Default)]
struct Directory {
    users: HashMap<String, LocalUser>,
    /// Storage key → (group, members), to undo a group's entries when it changes.
    groups: HashMap<String, (String, BTreeSet<String>)>,
    /// User → groups, derived from `groups`.
    membership: HashMap<String, BTreeSet<String>>,
}

impl Directory {
    fn rebuild_membership(&mut self) {
        let mut membership: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (group, members) in self.groups.values() {
            for member in members {
                membership
                    .entry(member.clone())
                    .or_default()
                    .insert(group.clone());
            }
        }
        self.membership = membership;
    }

    fn apply(&mut self, key: &str, obj: Option<&Value>) {
        let name = key.rsplit('/').next().unwrap_or_default();
        if let Some(user) = name.strip_prefix(USER_PREFIX) {
            self.users.remove(user);
            let parsed = obj.and_then(|o| {
                (o["type"].as_str() == Some(USER_SECRET_TYPE)
                    && secret_field(o, "username").as_deref() == Some(user))
                .then(|| LocalUser {
                    uid: crate::object::meta_str(o, "uid")
                        .unwrap_or_default()
                        .to_string(),
                    password_hash: secret_field(o, "password-hash").unwrap_or_default(),
                })
            });
            if let Some(parsed) = parsed {
                self.users.insert(user.to_string(), parsed);
            }
        } else if let Some(group) = name.strip_prefix(GROUP_PREFIX) {
            self.groups.remove(key);
            if let Some(o) = obj.filter(|o| {
                o["type"].as_str() == Some(GROUP_SECRET_TYPE)
                    && secret_field(o, "group").as_deref() == Some(group)
            }) {
                self.groups
                    .insert(key.to_string(), (group.to_string(), group_members(o)));
            }
            self.rebuild_membership();
        }
    }
}

/// Visor's own users and groups; see the module documentation.
pub struct LocalUsers {
    directory: RwLock<Directory>,
    /// A hash checked when the user is unknown, so an unknown user costs what a wrong
    /// password costs.
    decoy_hash: String,
}

impl LocalUsers {
    pub fn new() -> anyhow::Result<LocalUsers> {
        Ok(LocalUsers {
            directory: RwLock::default(),
            decoy_hash: hash_password("decoy password never matched")?,
        })
    }

    fn replace_all(&self, objects: &[(String, Value)]) {
        let mut directory = Directory::default();
        for (key, obj) in objects {
            directory.apply(key, Some(obj));
        }
        *self.directory.write().unwrap_or_else(|e| e.into_inner()) = directory;
    }

    /// Applies one stored Secret (or its deletion); keys outside Visor's prefixes are ignored.
    pub fn apply(&self, key: &str, obj: Option<&Value>) {
        self.directory
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(key, obj);
    }

    /// Fills the directory from the watch cache and keeps it current; the initial fill has
    /// happened when this returns.
    pub fn follow(self: &Arc<Self>, registry: &Arc<Registry>) -> tokio::task::JoinHandle<()> {
        let snapshot_of = |registry: &Registry| {
            let (snapshot, _, watch) = registry.cache.snapshot_and_watch(WATCH_PREFIX);
            let objects: Vec<(String, Value)> = snapshot
                .iter()
                .map(|(k, o)| (k.to_string(), o.value()))
                .collect();
            (objects, watch)
        };
        let (objects, watch) = snapshot_of(registry);
        self.replace_all(&objects);
        let users = self.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut watch = watch;
            loop {
                while let Some(item) = watch.next().await {
                    if let WatchItem::Event(event) = item {
                        match event.kind {
                            CacheEventKind::Deleted => users.apply(&event.key, None),
                            _ => users.apply(&event.key, Some(&event.object.value())),
                        }
                    }
                }
                tracing::debug!("identity watch ended; re-listing");
                let (objects, next) = snapshot_of(&registry);
                users.replace_all(&objects);
                watch = next;
            }
        })
    }

    fn info(directory: &Directory, name: &str) -> Option<UserInfo> {
        let user = directory.users.get(name)?;
        Some(UserInfo {
            name: name.to_string(),
            uid: user.uid.clone(),
            groups: directory
                .membership
                .get(name)
                .map(|g| g.iter().cloned().collect())
                .unwrap_or_default(),
        })
    }
}

#[async_trait::async_trait]
impl IdentityProvider for LocalUsers {
    fn name(&self) -> &str {
        LOCAL_PROVIDER
    }

    async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<UserInfo>, ProviderError> {
        let (hash, known) = {
            let directory = self.directory.read().unwrap_or_else(|e| e.into_inner());
            match directory.users.get(username) {
                Some(user) => (user.password_hash.clone(), true),
                None => (self.decoy_hash.clone(), false),
            }
        };
        let password = password.to_string();
        // argon2 takes tens of milliseconds of CPU: off the async workers.
        let matched = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|e| ProviderError {
                provider: LOCAL_PROVIDER.into(),
                message: format!("password check failed: {e}"),
            })?;
        if !(matched && known) {
            return Ok(None);
        }
        Ok(self.lookup(username))
    }

    fn lookup(&self, username: &str) -> Option<UserInfo> {
        let directory = self.directory.read().unwrap_or_else(|e| e.into_inner());
        Self::info(&directory, username)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("alice").is_ok());
        assert!(valid_name("dev.team-1").is_ok());
        for bad in [
            "",
            "Alice",
            "system:admin",
            "-a",
            "a-",
            "a b",
            &"a".repeat(201),
        ] {
            assert!(valid_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_are_argon2id_hashes() {
        let hash = hash_password("s3cret!").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("s3cret"));
        assert!(verify_password("s3cret!", &hash));
        assert!(!verify_password("s3cret", &hash));
        assert!(!verify_password("s3cret!", "plain"));
        // Two hashes of one password differ (random salt).
        assert_ne!(hash, hash_password("s3cret!").unwrap());
    }

    #[tokio::test]
    async fn directory_follows_users_and_groups() {
        let users = LocalUsers::new().unwrap();
        let key = |name: &str| format!("/registry/core/secrets/kube-system/{name}");
        let mut alice = user_secret("alice", &hash_password("pw").unwrap());
        alice["metadata"]["uid"] = json!("u1");
        users.apply(&key("visor-user-alice"), Some(&alice));
        let members: BTreeSet<String> = ["alice".to_string()].into();
        users.apply(
            &key("visor-group-devs"),
            Some(&group_secret("devs", &members)),
        );
        let info = users.authenticate("alice", "pw").await.unwrap().unwrap();
        assert_eq!(info.groups, vec!["devs".to_string()]);
        assert_eq!(info.uid, "u1");
        assert!(
            users
                .authenticate("alice", "wrong")
                .await
                .unwrap()
                .is_none()
        );
        assert!(users.authenticate("bob", "pw").await.unwrap().is_none());
        // A secret whose name and content disagree is not a user.
        let forged = user_secret("bob", &hash_password("pw").unwrap());
        users.apply(&key("visor-user-alice2"), Some(&forged));
        assert!(users.lookup("alice2").is_none());
        users.apply(&key("visor-group-devs"), None);
        assert!(users.lookup("alice").unwrap().groups.is_empty());
        users.apply(&key("visor-user-alice"), None);
        assert!(users.lookup("alice").is_none());
    }
}
