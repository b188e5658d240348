//! Visor's Kubernetes API server.
//!
//! Request path, each layer knowing nothing of the ones above it:
//! TLS and authentication ([`server`], [`auth`]) → request parsing ([`request`]) and content
//! negotiation ([`handler`]) → the generic registry ([`registry`]), which applies a kind's
//! description ([`kinds`]) to every verb → the watch cache and the store ([`visor_store`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::sync::watch as signal;
use visor_store::DynStore;
use visor_store::cache::WatchCache;

pub mod admission;
pub mod apply;
pub mod audit;
pub mod auth;
pub mod crd;
pub mod discovery;
pub mod errors;
pub mod handler;
pub mod kinds;
pub mod loopback;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod proxy;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod selectors;
pub mod server;
pub mod ssa;
pub mod strategic;
pub mod table;
pub mod watch;

use handler::{Handler, ServerInfo};
use kinds::Catalog;
use registry::{Registry, Scope};

/// Events kept for watches that resume from a past resource version: upstream's largest
/// per-resource watch cache. Fewer made busy clusters (thousands of hosts renewing leases while
/// pods churn) age out a reconnecting watcher's position within seconds, and each such
/// watcher then re-lists everything, which costs more than the events it missed.
const WATCH_HISTORY: usize = 100_000;
/// The history window compaction keeps, as upstream's default.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(300);
/// Namespaces every cluster has.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: DynStore,
    pub pki: Arc<pki::Pki>,
    /// Visor's own kinds, as CustomResourceDefinitions the server installs (or brings up to
    /// date) and serves before it reports ready.
    pub system_crds: Vec<serde_json::Value>,
    /// Login token lifetime and signing key rotation.
    pub auth: auth::AuthConfig,
    /// Audit log rotation.
    pub audit: audit::AuditConfig,
}

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub registry: Arc<Registry>,
    shutdown: signal::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
    compactor: tokio::task::JoinHandle<()>,
    crds: tokio::task::JoinHandle<()>,
    /// RBAC's index follower and ClusterRole aggregation.
    rbac: Vec<tokio::task::JoinHandle<()>>,
    /// The follower of Visor's users and groups.
    identities: tokio::task::JoinHandle<()>,
    audit: Arc<audit::AuditLog>,
    handler: Arc<Handler>,
}

impl RunningServer {
    /// A transport for clients inside this process, acting as `user` in `groups` (see
    /// [`loopback`]). Requests still in flight at shutdown are dropped with their client.
    pub fn loopback(&self, user: &str, groups: &[&str]) -> loopback::Loopback {
        loopback::Loopback::new(
            self.handler.clone(),
            auth::Identity::authenticated(user, groups),
        )
    }

    /// Stops accepting connections, drains open ones, and stops background work.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.compactor.abort();
        self.crds.abort();
        self.rbac.iter().for_each(|task| task.abort());
        self.identities.abort();
        self.serving.await.context("server task failed")?;
        // Every answered request's audit event is on disk before shutdown returns.
        self.audit.close();
        Ok(())
    }
}

/// Starts the API server. Returns once it is ready to serve: the store is open, the watch
/// cache is filled, the system namespaces exist and the port is listening.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let catalog = Arc::new(Catalog::builtin());
    let decode_catalog = catalog.clone();
    let cache = WatchCache::start(
        config.store.clone(),
        "/registry/",
        move |kv| object::decode_for_cache(&decode_catalog, kv),
        WATCH_HISTORY,
    )
    .await
    .context("filling the watch cache")?;
    let registry = Arc::new(Registry {
        catalog: catalog.clone(),
        store: config.store.clone(),
        cache,
    });
    ensure_system_namespaces(&registry).await?;
    ensure_system_crds(&registry, &config.system_crds).await?;
    // Serve the custom resources that already exist before reporting ready, then follow changes.
    crd::serve_existing(&registry).await;
    let crds = tokio::spawn(crd::run(registry.clone()));
    // The default policy exists and the authorizer's index is filled before serving.
    let (authorizer, rbac) = rbac::start(&registry).await.context("starting RBAC")?;
    let (authenticator, identities) =
        auth::Authenticator::start(&registry, &config.data_dir, &config.auth)
            .await
            .context("starting authentication")?;
    let audit = Arc::new(
        audit::AuditLog::open(&config.data_dir, &config.audit).context("opening the audit log")?,
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let tls = Arc::new(config.pki.server_tls_config()?);
    let store = config.store.clone();
    let handler = Arc::new(Handler {
        registry: registry.clone(),
        info: ServerInfo {
            address: local_addr.to_string(),
        },
        health: Arc::new(move || {
            let store = store.clone();
            Box::pin(async move {
                store
                    .current_revision()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        }),
        authorizer,
        authenticator,
        audit: audit.clone(),
        node_proxy: Arc::new(proxy::NodeProxy::new(&config.pki)?),
    });
    let (shutdown, shutdown_rx) = signal::channel(false);
    let serving = tokio::spawn(server::serve(listener, tls, handler.clone(), shutdown_rx));
    let compactor = visor_store::compactor::spawn(config.store.clone(), COMPACTION_INTERVAL);
    tracing::info!(address = %local_addr, "API server ready");
    Ok(RunningServer {
        local_addr,
        registry,
        shutdown,
        serving,
        compactor,
        crds,
        rbac,
        identities,
        audit,
        handler,
    })
}

/// Creates each of Visor's own CRDs, or replaces its spec when this build describes the kind
/// differently, and serves it at once (not waiting for the CRD follower), so the kinds are
/// there when the server reports ready.
async fn ensure_system_crds(
    registry: &Arc<Registry>,
    crds: &[serde_json::Value],
) -> anyhow::Result<()> {
    let def = registry
        .catalog
        .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .context("CRDs are served")?;
    let scope = Scope {
        def,
        namespace: None,
    };
    let query = request::Query::default();
    for crd in crds {
        let name = object::name(crd).to_string();
        let stored = match registry.create(&scope, crd.clone(), &query).await {
            Ok(created) => created.object,
            Err(e) if e.code == 409 => {
                let spec = crd["spec"].clone();
                registry
                    .guaranteed_update(&scope, &name, None, false, move |current| {
                        let mut next = current.clone();
                        next["spec"] = spec.clone();
                        Ok(next)
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("updating CRD {name}: {e}"))?
                    .object
            }
            Err(e) => anyhow::bail!("creating CRD {name}: {e}"),
        };
        crd::reconcile(registry, stored).await;
    }
    Ok(())
}

async fn ensure_system_namespaces(registry: &Registry) -> anyhow::Result<()> {
    let def = registry
        .catalog
        .lookup("", "v1", "namespaces")
        .context("namespaces are served")?;
    let scope = Scope {
        def,
        namespace: None,
    };
    for name in SYSTEM_NAMESPACES {
        let namespace =
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
        match registry
            .create(&scope, namespace, &request::Query::default())
            .await
        {
            Ok(_) => tracing::info!(namespace = name, "created system namespace"),
            Err(e) if e.code == 409 => {}
            Err(e) => anyhow::bail!("creating namespace {name}: {e}"),
        }
    }
    Ok(())
}
