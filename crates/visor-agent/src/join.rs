//! Joining: turning a join token into the host's own credentials.
//!
//! Flow ([`credentials`]):
//! 1. if `DIR/pki` holds a client certificate for this node that is still valid for a while,
//!    use it (a restarted agent does not need the token again);
//! 2. otherwise generate two key pairs on the host, send certificate signing requests for a
//!    client certificate (`system:node:NAME`, group `system:nodes`) and a serving certificate
//!    (for the agent's own HTTPS endpoint, naming its addresses) to `POST /join` with the
//!    token as a bearer credential, and keep what comes back.
//!
//! Guarantees: private keys never leave the host and are written mode 0600; the join token is
//! never written to disk or logged by the agent.
//!
//! Caveat: without `--certificate-authority` the agent trusts the CA that the join answer
//! names (trust on first use, like SSH) and pins it for every later connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// How long before expiry a kept certificate is replaced by joining again.
const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// The host's credentials: PEM texts.
#[derive(Clone)]
pub struct Credentials {
    pub ca: String,
    pub client_cert: String,
    pub client_key: String,
    pub serving_cert: String,
    pub serving_key: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinRequest<'a> {
    node_name: &'a str,
    client_csr: String,
    serving_csr: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinResponse {
    client_certificate: String,
    serving_certificate: String,
    ca_certificate: String,
}

/// What joining needs to know.
pub struct JoinOptions<'a> {
    pub server: &'a str,
    pub token: Option<&'a str>,
    pub node_name: &'a str,
    /// Addresses (IPs or DNS names) the serving certificate must name.
    pub serving_names: &'a [String],
    pub certificate_authority: Option<&'a Path>,
    pub pki_dir: &'a Path,
}

/// Returns the host's credentials, joining with the token when there are none yet (see the
/// module documentation).
pub async fn credentials(options: &JoinOptions<'_>) -> anyhow::Result<Credentials> {
    if let Some(kept) = load(options.pki_dir, options.node_name, options.serving_names)? {
        tracing::info!(dir = %options.pki_dir.display(), "using the host's existing credentials");
        return Ok(kept);
    }
    let token = options.token.context(
        "this host has no credentials yet: pass --token (the server writes one to DATA_DIR/agent-token; `visor token create` makes more)",
    )?;
    let pinned_ca = match options.certificate_authority {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };

    let client_key = rcgen::KeyPair::generate().context("generating the client key")?;
    let serving_key = rcgen::KeyPair::generate().context("generating the serving key")?;
    let subject = format!("system:node:{}", options.node_name);
    let client_csr = csr(&subject, &[], &client_key)?;
    let serving_csr = csr(&subject, options.serving_names, &serving_key)?;

    let client = join_client(options.server, token, pinned_ca.as_deref())?;
    let body = serde_json::to_vec(&JoinRequest {
        node_name: options.node_name,
        client_csr,
        serving_csr,
    })?;
    let request = http::Request::post("/join")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)?;
    let answer: JoinResponse = client.request(request).await.map_err(|e| match e {
        kube::Error::Api(status) => anyhow::anyhow!(
            "the server refused to let {} join: {} ({})",
            options.node_name,
            status.message,
            status.code
        ),
        other => anyhow::anyhow!("joining {}: {other}", options.server),
    })?;
    if let Some(pinned) = &pinned_ca
        && pinned.trim() != answer.ca_certificate.trim()
    {
        anyhow::bail!("the server answered with a CA other than --certificate-authority");
    }
    if pinned_ca.is_none() {
        tracing::warn!(
            "trusting the cluster CA the server presented on first join; pass --certificate-authority to pin it"
        );
    }
    let credentials = Credentials {
        ca: answer.ca_certificate,
        client_cert: answer.client_certificate,
        client_key: client_key.serialize_pem(),
        serving_cert: answer.serving_certificate,
        serving_key: serving_key.serialize_pem(),
    };
    save(options.pki_dir, &credentials)?;
    tracing::info!(node = options.node_name, "joined the cluster");
    Ok(credentials)
}

/// A client for the join request itself: no client certificate, the token as bearer.
fn join_client(server: &str, token: &str, ca: Option<&str>) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::new(
        server
            .parse()
            .with_context(|| format!("--server {server:?} is not a URL"))?,
    );
    config.auth_info.token = Some(SecretString::from(token.to_string()));
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    match ca {
        Some(pem) => config.root_cert = Some(pem_to_der(pem)?),
        None => config.accept_invalid_certs = true,
    }
    kube::Client::try_from(config).context("building the join client")
}

/// A kube client that authenticates as the host.
pub fn client(server: &str, credentials: &Credentials) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::new(
        server
            .parse()
            .with_context(|| format!("--server {server:?} is not a URL"))?,
    );
    config.root_cert = Some(pem_to_der(&credentials.ca)?);
    config.auth_info.client_certificate_data = Some(base64_pem(&credentials.client_cert));
    config.auth_info.client_key_data =
        Some(SecretString::from(base64_pem(&credentials.client_key)));
    config.connect_timeout = Some(Duration::from_secs(10));
    kube::Client::try_from(config).context("building the host's API client")
}

fn base64_pem(pem: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(pem)
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let certs: Vec<Vec<u8>> = rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
        .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .context("reading the CA certificate")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the CA file");
    Ok(certs)
}

fn csr(common_name: &str, names: &[String], key: &rcgen::KeyPair) -> anyhow::Result<String> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .context("the node's addresses are not valid certificate names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    Ok(params
        .serialize_request(key)
        .context("building a certificate signing request")?
        .pem()?)
}

const FILES: [&str; 5] = [
    "ca.crt",
    "client.crt",
    "client.key",
    "serving.crt",
    "serving.key",
];

fn save(dir: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let texts = [
        &credentials.ca,
        &credentials.client_cert,
        &credentials.client_key,
        &credentials.serving_cert,
        &credentials.serving_key,
    ];
    for (name, text) in FILES.iter().zip(texts) {
        let path = dir.join(name);
        let temporary = dir.join(format!(".{name}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The kept credentials, if they are complete, for this node, name the same addresses and stay
/// valid long enough.
fn load(dir: &Path, node_name: &str, names: &[String]) -> anyhow::Result<Option<Credentials>> {
    let paths: Vec<PathBuf> = FILES.iter().map(|f| dir.join(f)).collect();
    if !paths.iter().all(|p| p.exists()) {
        return Ok(None);
    }
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let credentials = Credentials {
        ca: read(&paths[0])?,
        client_cert: read(&paths[1])?,
        client_key: read(&paths[2])?,
        serving_cert: read(&paths[3])?,
        serving_key: read(&paths[4])?,
    };
    let expected = format!("system:node:{node_name}");
    let client_ok = certificate_fits(&credentials.client_cert, &expected, &[])?;
    let serving_ok = certificate_fits(&credentials.serving_cert, &expected, names)?;
    Ok((client_ok && serving_ok).then_some(credentials))
}

fn certificate_fits(pem: &str, common_name: &str, names: &[String]) -> anyhow::Result<bool> {
    let der = pem_to_der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der[0])
        .map_err(|e| anyhow::anyhow!("reading a kept certificate: {e}"))?;
    let cn_matches = cert
        .subject()
        .iter_common_name()
        .any(|cn| cn.as_str().ok() == Some(common_name));
    let renew_at = jiff::Timestamp::now() + RENEW_BEFORE;
    let valid = cert.validity().not_after.timestamp() > renew_at.as_second();
    let san: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
                            .to_string(),
                        16 => {
                            let octets: [u8; 16] = (*bytes).try_into().unwrap_or([0; 16]);
                            std::net::Ipv6Addr::from(octets).to_string()
                        }
                        _ => String::new(),
                    },
                    _ => String::new(),
                })
                .collect()
        })
        .unwrap_or_default();
    let names_match = names.iter().all(|n| san.contains(n));
    Ok(cn_matches && valid && names_match)
}
