//! The `server` role: a Kubernetes API server over a store, and `up`, everything on one machine.
//!
//! Start-up order matters to the tools that wait for a server: the admin kubeconfig appears
//! only once the server answers requests, so "the file exists" means "the server is ready".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use visor_apiserver::pki::Pki;

use crate::kubeconfig::Kubeconfig;

/// The name of the admin kubeconfig inside the data directory.
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";

/// Everything `visor server` needs to run.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `sqlite` or `etcd://HOST:PORT[,HOST:PORT...]`.
    pub datastore: String,
    /// Login tokens and signing keys.
    pub auth: visor_apiserver::auth::AuthConfig,
    /// Audit log rotation.
    pub audit: visor_apiserver::audit::AuditConfig,
    /// The scheduler's and placement controllers' settings.
    pub placement: crate::placement::PlacementArgs,
}

/// Runs a server until SIGTERM or SIGINT, then shuts it down.
///
/// Flow: create the data directory; load or create the PKI (the serving certificate names the
/// listen address); open the store; start the API server, which returns once it serves; write
/// `DATA_DIR/admin.kubeconfig` pointing at the address actually bound (so `--listen
/// 127.0.0.1:0` works) and print where it is; wait for a signal; shut down.
///
/// Caveat: a stale `admin.kubeconfig` from an earlier run is removed before the server starts,
/// so a tool waiting for the file never mistakes the old one for readiness.
pub async fn run(options: ServerOptions) -> anyhow::Result<()> {
    run_with(options, None).await
}

/// What runs beside the server once it serves (`visor up`'s local agent); it gets the
/// server's URL and data directory, and the server stops if it fails.
pub type Companion = Box<
    dyn FnOnce(String, PathBuf) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send,
>;

/// [`run`], with a companion started once the server is ready.
pub async fn run_with(options: ServerOptions, companion: Option<Companion>) -> anyhow::Result<()> {
    let data_dir = prepare_data_dir(&options.data_dir)?;
    let kubeconfig_path = data_dir.join(ADMIN_KUBECONFIG);
    match std::fs::remove_file(&kubeconfig_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", kubeconfig_path.display())),
    }

    let hosts = vec![options.listen.ip().to_string()];
    let pki = Arc::new(Pki::load_or_create(&data_dir, &hosts).context("loading the PKI")?);
    let store = visor_store::open(&options.datastore, &data_dir)
        .await
        .with_context(|| format!("opening the datastore {:?}", options.datastore))?;
    tracing::info!(datastore = %options.datastore, data_dir = %data_dir.display(), "store opened");

    // Signals are hooked before the server starts so one arriving during start-up is not lost.
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    let server = visor_apiserver::start(visor_apiserver::ServerConfig {
        listen: options.listen,
        data_dir: data_dir.clone(),
        store,
        pki: pki.clone(),
        system_crds: system_crds()?,
        auth: options.auth.clone(),
        audit: options.audit.clone(),
    })
    .await
    .context("starting the API server")?;
    let url = server_url(server.local_addr);
    tracing::info!(%url, "serving");
    let controllers = crate::controllers::spawn(&server);
    let placement = crate::placement::spawn(&server, &options.placement);

    let (cert, key) = pki
        .issue_client_cert("admin", &["system:masters"])
        .context("issuing the admin certificate")?;
    Kubeconfig::admin(&url, pki.ca_pem(), &cert, &key).write(&kubeconfig_path)?;
    println!("Visor is serving at {url}");
    println!("Admin kubeconfig: {}", kubeconfig_path.display());
    println!("export KUBECONFIG={}", kubeconfig_path.display());

    let companion = async {
        match companion {
            Some(companion) => companion(url.clone(), data_dir.clone()).await,
            None => std::future::pending().await,
        }
    };
    let signal_name = tokio::select! {
        result = companion => {
            controllers.abort();
            placement.abort();
            server.shutdown().await.context("shutting down")?;
            return result.context("the local agent stopped");
        }
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal = signal_name, "shutting down");
    controllers.abort();
    placement.abort();
    server.shutdown().await.context("shutting down")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT (for commands that run until stopped).
pub async fn termination() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
    }
}

/// Visor's own kinds as the CRDs the server installs.
fn system_crds() -> anyhow::Result<Vec<serde_json::Value>> {
    visor_api::crds()
        .into_iter()
        .map(|crd| serde_json::to_value(crd).context("encoding a Visor CRD"))
        .collect()
}

/// The `https://` URL clients use for a bound address. A wildcard address is not one a client
/// can connect to, so it is replaced by the loopback address of the same family.
pub fn server_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, addr.port()))
}

/// Creates the data directory (mode 0700: it holds keys and the store) and returns its absolute
/// path, so the printed `export KUBECONFIG=` line works from any directory.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

/// The data directory `visor up` uses unless told otherwise: `$VISOR_DATA_DIR`, else
/// `~/.visor`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("VISOR_DATA_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither VISOR_DATA_DIR nor HOME is set; pass --data-dir")?;
    Ok(PathBuf::from(home).join(".visor"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_become_loopback_in_urls() {
        assert_eq!(
            server_url("0.0.0.0:6443".parse().unwrap()),
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            server_url("[::]:6443".parse().unwrap()),
            "https://[::1]:6443"
        );
        assert_eq!(
            server_url("127.0.0.1:7000".parse().unwrap()),
            "https://127.0.0.1:7000"
        );
        assert_eq!(
            server_url("[::1]:7000".parse().unwrap()),
            "https://[::1]:7000"
        );
    }
}
