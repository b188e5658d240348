//! Who is making a request.
//!
//! Credentials, tried in upstream's order (the first that is present decides):
//!
//! 1. a client certificate signed by the cluster CA, verified by the TLS layer: the CN is the
//!    user and each O a group (admins, controllers, and hosts after [`join`]);
//! 2. `Authorization: Bearer TOKEN` with a token this server signed ([`keys`]): a login token
//!    (`POST /login`, [`login`], users from an [`users::IdentityProvider`]) or a
//!    service-account token ([`serviceaccount`]). A bearer credential that does not verify is
//!    `401` — never a fall back to anonymous.
//!
//! Anonymous requests reach only `/healthz`, `/livez`, `/readyz`, `/version`, `/login` and
//! `/join` (which checks its own join token, [`bootstrap`]).
//!
//! Verifying an ES256 signature costs tens of microseconds, so verified tokens are kept in a
//! small cache until they expire; what can change while a token lives — the user still exists
//! with the same uid, the service account and bound pod still exist — is checked on every
//! request against in-memory indexes.
//!
//! Tokens, passwords and join tokens are never logged: the types that hold them hide them in
//! their `Debug` forms, and log lines name only users and token ids.

pub mod bootstrap;
pub mod join;
pub mod keys;
pub mod login;
pub mod permissions;
pub mod serviceaccount;
pub mod users;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use http::{HeaderMap, header};
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::registry::Registry;
use keys::{Claims, KeySet, VisorClaim};
use users::{IdentityProvider, LocalUsers};

/// The issuer of every token this server signs, as upstream's default service-account issuer.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The audience tokens must name to be accepted by the API server (upstream's default
/// `--api-audiences`, the issuer).
pub const API_AUDIENCE: &str = ISSUER;
/// Upstream's group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Default lifetime of login tokens.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60 * 60);
/// Verified tokens kept before the cache is swept.
const TOKEN_CACHE_MAX: usize = 10_000;

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The identity a verified client certificate carries.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (user, groups) = crate::pki::identity_from_cert(der)?;
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        Some(Self::authenticated(&user, &groups))
    }

    /// `user` in `groups`, and in the group of every authenticated user.
    pub fn authenticated(user: &str, groups: &[&str]) -> Self {
        let groups = groups.iter().copied().chain([AUTHENTICATED]);
        Identity {
            user: user.into(),
            groups: groups.map(String::from).collect(),
        }
    }
}

/// The client's address, put into each request's extensions by the listener (for the audit
/// log and login throttling).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The client address of a request, if the listener recorded it.
pub fn client_ip<B>(request: &http::Request<B>) -> Option<IpAddr> {
    request.extensions().get::<ClientAddr>().map(|a| a.0.ip())
}

/// Authentication settings `visor server` passes in.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// How long login tokens are valid.
    pub token_lifetime: Duration,
    /// Create a new token signing key at start (old tokens stay valid until they expire).
    pub rotate_signing_key: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            rotate_signing_key: false,
        }
    }
}

/// Signed-token checks: signature (once per token, then cached until it expires) and the
/// login-token user's current state.
pub struct TokenVerifier {
    keys: KeySet,
    providers: Vec<Arc<dyn IdentityProvider>>,
    /// Token → its verified claims, until it expires.
    verified: RwLock<HashMap<String, Claims>>,
}

impl TokenVerifier {
    pub fn new(keys: KeySet, providers: Vec<Arc<dyn IdentityProvider>>) -> TokenVerifier {
        TokenVerifier {
            keys,
            providers,
            verified: RwLock::default(),
        }
    }

    /// The claims of a token this server signed for the API's audience, still valid.
    pub fn claims(&self, token: &str) -> Result<Claims, String> {
        if !keys::looks_like_jwt(token) {
            return Err("not a token this server issues".into());
        }
        let now = jiff::Timestamp::now().as_second();
        let cached = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .filter(|c| c.exp > now)
            .cloned();
        if let Some(claims) = cached {
            return Ok(claims);
        }
        let claims = self
            .keys
            .verify(token, ISSUER, &[API_AUDIENCE.to_string()])
            .map_err(|e| e.to_string())?;
        let mut cache = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.retain(|_, c| c.exp > now);
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), claims.clone());
        Ok(claims)
    }

    /// The identity of a login token's user as the provider knows them now.
    pub fn login_identity(&self, user: &str, claim: &VisorClaim) -> Result<Identity, String> {
        let provider = self
            .providers
            .iter()
            .find(|p| p.name() == claim.provider)
            .ok_or("issued by an identity provider no longer configured")?;
        let info = provider.lookup(user).ok_or("the user no longer exists")?;
        if info.uid != claim.uid {
            return Err("the user was deleted and created again".into());
        }
        let mut groups = info.groups;
        groups.push(AUTHENTICATED.into());
        Ok(Identity {
            user: info.name,
            groups,
        })
    }

    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        self.keys.sign(claims)
    }
}

/// Everything that turns credentials into identities; see the module documentation.
pub struct Authenticator {
    registry: Arc<Registry>,
    tokens: TokenVerifier,
    providers: Vec<Arc<dyn IdentityProvider>>,
    token_lifetime: Duration,
    throttle: login::Throttle,
    signer: join::NodeSigner,
}

impl Authenticator {
    /// Loads (or creates) the signing keys and the CA for node certificates from the data
    /// directory, starts following Visor's users, and makes sure the local agent has a join
    /// token. Returns the authenticator and its background task.
    pub async fn start(
        registry: &Arc<Registry>,
        data_dir: &Path,
        config: &AuthConfig,
    ) -> anyhow::Result<(Arc<Authenticator>, tokio::task::JoinHandle<()>)> {
        if config.rotate_signing_key {
            keys::KeySet::rotate(data_dir).context("rotating the token signing key")?;
        }
        let keys = KeySet::load_or_create(data_dir).context("loading token signing keys")?;
        let signer = join::NodeSigner::load(data_dir)?;
        let local = Arc::new(LocalUsers::new()?);
        let follower = local.follow(registry);
        bootstrap::ensure_agent_token(registry, data_dir).await?;
        let providers: Vec<Arc<dyn IdentityProvider>> = vec![local];
        let authenticator = Authenticator {
            registry: registry.clone(),
            tokens: TokenVerifier::new(keys, providers.clone()),
            providers,
            token_lifetime: config.token_lifetime,
            throttle: login::Throttle::default(),
            signer,
        };
        Ok((Arc::new(authenticator), follower))
    }

    /// The identity of a request: the certificate's if there is one, else the bearer token's.
    /// `Ok(None)` when the request carries no credential; `401` when it carries one that
    /// does not verify.
    pub fn authenticate(
        &self,
        certificate: Option<Identity>,
        headers: &HeaderMap,
    ) -> ApiResult<Option<Identity>> {
        if certificate.is_some() {
            return Ok(certificate);
        }
        let Some(token) = bearer_token(headers) else {
            return Ok(None);
        };
        match self.authenticate_token(token) {
            Ok(identity) => Ok(Some(identity)),
            Err(why) => {
                tracing::debug!(%why, "bearer token refused");
                Err(ApiError::unauthorized())
            }
        }
    }

    /// Verifies a bearer token and returns whom it names.
    pub fn authenticate_token(&self, token: &str) -> Result<Identity, String> {
        let claims = self.tokens.claims(token)?;
        match (&claims.kubernetes, &claims.visor) {
            (Some(k8s), None) => serviceaccount::identity(&self.registry, &claims.sub, k8s),
            (None, Some(visor)) => self.tokens.login_identity(&claims.sub, visor),
            _ => Err("a token of no known kind".into()),
        }
    }

    /// Signs a token for `claims` (used for login and service-account tokens).
    pub fn sign(&self, claims: &Claims) -> ApiResult<String> {
        self.tokens
            .sign(claims)
            .map_err(|e| ApiError::internal(format!("{e:#}")))
    }

    /// `POST /login`; see [`login`]. The answer also lists the namespaces the user may use
    /// (those where `authorizer` lets them list pods), for the client's contexts.
    pub async fn login(
        &self,
        headers: &HeaderMap,
        address: Option<IpAddr>,
        authorizer: &crate::rbac::Authorizer,
    ) -> ApiResult<Value> {
        let credentials = login::basic_credentials(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .ok_or_else(ApiError::unauthorized)?;
        let delay = self.throttle.delay(&credentials.username, address);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut found = None;
        for provider in &self.providers {
            match provider
                .authenticate(&credentials.username, &credentials.password)
                .await
            {
                Ok(Some(info)) => {
                    found = Some((provider.name().to_string(), info));
                    break;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "identity provider failed"),
            }
        }
        let Some((provider, info)) = found else {
            self.throttle.failed(&credentials.username, address);
            tracing::info!(user = %credentials.username, ?address, "login refused");
            return Err(ApiError::unauthorized());
        };
        self.throttle.succeeded(&credentials.username, address);
        let now = jiff::Timestamp::now().as_second();
        let lifetime = self.token_lifetime.as_secs() as i64;
        let claims = Claims {
            iss: ISSUER.into(),
            sub: info.name.clone(),
            aud: vec![API_AUDIENCE.into()],
            exp: now + lifetime,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: None,
            visor: Some(VisorClaim {
                provider,
                uid: info.uid.clone(),
            }),
        };
        let token = self.sign(&claims)?;
        let expires = jiff::Timestamp::from_second(claims.exp)
            .map(|t| t.to_string())
            .unwrap_or_default();
        tracing::info!(user = %info.name, "login");
        let mut groups = info.groups.clone();
        groups.push(AUTHENTICATED.into());
        let identity = Identity {
            user: info.name.clone(),
            groups,
        };
        Ok(json!({
            "token": token,
            "expirationTimestamp": expires,
            "user": info.name,
            "groups": info.groups,
            "namespaces": self.usable_namespaces(authorizer, &identity),
        }))
    }

    /// The namespaces in which `identity` may list pods: where a person "may work", as the
    /// login client presents them (one context each).
    pub fn usable_namespaces(
        &self,
        authorizer: &crate::rbac::Authorizer,
        identity: &Identity,
    ) -> Vec<String> {
        let (namespaces, _) = self.registry.cache.list("/registry/core/namespaces/");
        namespaces
            .iter()
            .filter_map(|(key, _)| key.rsplit('/').next().map(str::to_string))
            .filter(|namespace| {
                let attrs = crate::rbac::Attributes::resource("list", "", "pods", namespace, "");
                authorizer.authorize(identity, &attrs).allowed
            })
            .collect()
    }

    /// `POST /join`; see [`join`].
    pub fn join(&self, headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
        let token = bearer_token(headers)
            .and_then(bootstrap::JoinToken::parse)
            .filter(|t| bootstrap::verify(&self.registry, t))
            .ok_or_else(ApiError::unauthorized)?;
        tracing::info!(token_id = %token.id, "join request");
        join::answer(&self.signer, body)
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

/// Figures of [`bench_authenticate`].
#[derive(Clone, Copy, Debug)]
pub struct AuthBench {
    /// Token check (cached signature, user lookup) plus the RBAC decision, per request.
    pub request_p50: Duration,
    pub request_p99: Duration,
    /// The first sight of a token: the ES256 signature check alone.
    pub first_verify_p50: Duration,
}

/// Measures what authentication and authorisation add to a request: a login token checked
/// (signature cached, user and groups looked up) and the RBAC decision, with `bindings`
/// RoleBindings loaded (see [`crate::rbac::bench_authorizer`]); and, separately, the ES256
/// verification a token costs the first time it is seen. `iterations` samples each.
pub fn bench_authenticate(bindings: usize, iterations: usize) -> anyhow::Result<AuthBench> {
    let dir = tempfile::tempdir().context("a directory for the bench's keys")?;
    let keys = KeySet::load_or_create(dir.path())?;
    let local = Arc::new(LocalUsers::new()?);
    let mut user = users::user_secret("user-1", &users::hash_password("bench")?);
    user["metadata"]["uid"] = json!("uid-1");
    local.apply(
        "/registry/core/secrets/kube-system/visor-user-user-1",
        Some(&user),
    );
    let members: std::collections::BTreeSet<String> = ["user-1".to_string()].into();
    local.apply(
        "/registry/core/secrets/kube-system/visor-group-dev",
        Some(&users::group_secret("dev", &members)),
    );
    let verifier = TokenVerifier::new(keys, vec![local]);
    let now = jiff::Timestamp::now().as_second();
    let claims = |jti: usize| Claims {
        iss: ISSUER.into(),
        sub: "user-1".into(),
        aud: vec![API_AUDIENCE.into()],
        exp: now + 3600,
        nbf: now,
        iat: now,
        jti: jti.to_string(),
        kubernetes: None,
        visor: Some(VisorClaim {
            provider: users::LOCAL_PROVIDER.into(),
            uid: "uid-1".into(),
        }),
    };
    let authorizer = crate::rbac::bench_authorizer(bindings);
    let attrs = crate::rbac::Attributes::resource("list", "", "configmaps", "ns-1", "");
    let token = verifier.sign(&claims(0))?;
    let percentile = |samples: &mut Vec<Duration>, q: f64| {
        samples.sort();
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = std::time::Instant::now();
        let claims = verifier.claims(&token).map_err(anyhow::Error::msg)?;
        let identity = verifier
            .login_identity(&claims.sub, claims.visor.as_ref().context("a login token")?)
            .map_err(anyhow::Error::msg)?;
        let decision = authorizer.authorize(&identity, &attrs);
        samples.push(started.elapsed());
        anyhow::ensure!(decision.allowed, "the bench measures an allowed request");
    }
    let request_p50 = percentile(&mut samples, 0.5);
    let request_p99 = percentile(&mut samples, 0.99);
    let fresh: Vec<String> = (1..=iterations.clamp(1, 2000))
        .map(|i| verifier.sign(&claims(i)))
        .collect::<anyhow::Result<_>>()?;
    let mut first = Vec::with_capacity(fresh.len());
    for token in &fresh {
        let started = std::time::Instant::now();
        std::hint::black_box(verifier.claims(token).map_err(anyhow::Error::msg)?);
        first.push(started.elapsed());
    }
    Ok(AuthBench {
        request_p50,
        request_p99,
        first_verify_p50: percentile(&mut first, 0.5),
    })
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub(crate) use crate::pki::write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc.def"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }
}
