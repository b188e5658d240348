//! Starts the controllers inside `visor server`, connected to the server like any client:
//! over HTTPS with a certificate of their own.

use anyhow::Context;
use visor_apiserver::pki::Pki;

use crate::kubeconfig::Kubeconfig;

/// The identity the in-process controllers act as.
const CONTROLLER_USER: &str = "system:visor-controller-manager";

/// Spawns the controllers; they stop when the returned task is aborted.
pub async fn spawn(url: &str, pki: &Pki) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (cert, key) = pki
        .issue_client_cert(CONTROLLER_USER, &["system:masters"])
        .context("issuing the controllers' certificate")?;
    let yaml = serde_saphyr::to_string(&Kubeconfig::admin(url, pki.ca_pem(), &cert, &key))
        .context("encoding the controllers' kubeconfig")?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml)
        .context("reading the controllers' kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("configuring the controllers' client")?;
    let client = kube::Client::try_from(config).context("building the controllers' client")?;
    Ok(tokio::spawn(visor_controllers::run(
        client,
        std::future::pending(),
    )))
}
