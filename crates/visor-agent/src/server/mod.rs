//! The agent's HTTPS endpoint, through which the API server proxies `kubectl logs`, `exec`
//! and `port-forward`.
//!
//! Like the kubelet's: the API server connects with its own client certificate, and the agent
//! serves container logs from the runtime's CRI log files ([`logs`]), runs commands in
//! containers over the WebSocket remote-command protocol ([`exec`]) and forwards ports over
//! SPDY/3.1, plain or tunneled in WebSocket ([`portforward`], [`spdy`]). Containers are found
//! through the pod workers' [`PodDirectory`]; everything that touches a container goes through
//! the [`Runtime`].

pub mod exec;
pub mod logs;
pub mod portforward;
pub mod spdy;
#[cfg(feature = "testing")]
pub mod testing;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::runtime::Runtime;
use exec::ExecRequest;
use logs::LogOptions;

/// Where the agent's pod workers keep a pod's containers, as the endpoint needs them.
pub trait PodDirectory: Send + Sync + 'static {
    /// The sandbox of a pod the agent runs.
    fn sandbox_id(&self, namespace: &str, pod: &str) -> Option<String>;
    /// A container of a pod: the runtime's container ID (of the current attempt) and its log
    /// file, and the log file of the attempt before (for `--previous`).
    fn container(&self, namespace: &str, pod: &str, container: &str) -> Option<ContainerEntry>;
    /// The container names of a pod, in spec order (the default container is the first, or
    /// the one named by the `kubectl.kubernetes.io/default-container` annotation).
    fn containers(&self, namespace: &str, pod: &str) -> Option<Vec<String>>;
}

#[derive(Clone, Debug)]
pub struct ContainerEntry {
    pub container_id: Option<String>,
    pub running: bool,
    pub log_path: Option<PathBuf>,
    pub previous_log_path: Option<PathBuf>,
}

/// The user the API server authenticates as; the only client the endpoint serves.
pub const API_SERVER_USER: &str = "system:visor-apiserver";

/// How long shutdown waits for open requests before closing them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, Infallible>;

/// A TLS configuration for the agent's endpoint: serves `cert_pem`/`key_pem` and requires a
/// client certificate signed by the cluster CA (`ca_pem`); a client without one fails the
/// handshake. HTTP/1.1 only (the streaming protocols are HTTP/1.1 upgrades).
///
/// Which identity is served is checked by [`serve`]: only [`API_SERVER_USER`].
pub fn agent_tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(ca.context("parsing the cluster CA certificate")?)
            .context("adding the cluster CA")?;
    }
    if roots.is_empty() {
        anyhow::bail!("the cluster CA PEM holds no certificate");
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the client certificate verifier")?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the agent's serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("parsing the agent's serving key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("loading the agent's serving certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The user (subject common name) of a client certificate, as the API server reads it.
fn certificate_user(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// What requests are served with.
struct Endpoint {
    runtime: Arc<dyn Runtime>,
    pods: Arc<dyn PodDirectory>,
    /// Ends upgraded sessions (exec, port-forward) at shutdown.
    sessions: CancellationToken,
}

/// Serves the agent's endpoint on `listener` until `shutdown` completes.
///
/// Routes, as the kubelet names them (the API server proxies to them):
/// - `GET /containerLogs/{namespace}/{pod}/{container}` — the log, `text/plain`, streamed with
///   `follow` ([`logs`] for the options);
/// - `GET|POST /exec/{namespace}/{pod}/{container}?command=…` — a WebSocket upgrade speaking
///   `v5.channel.k8s.io` or `v4.channel.k8s.io` ([`exec`]);
/// - `GET|POST /portForward/{namespace}/{pod}` — SPDY/3.1, plain or tunneled in WebSocket
///   ([`portforward`]);
/// - `GET /healthz`.
///
/// Guarantees: a connection whose client certificate (already verified against the cluster CA
/// by the TLS layer, see [`agent_tls_config`]) is not [`API_SERVER_USER`]'s gets `403` for
/// every request. Errors are `metav1.Status` JSON with the HTTP code. At shutdown the listener
/// closes, open sessions are cancelled and requests get 5 s to finish.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    runtime: Arc<dyn Runtime>,
    pods: Arc<dyn PodDirectory>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let endpoint = Arc::new(Endpoint {
        runtime,
        pods,
        sessions: CancellationToken::new(),
    });
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()).http1_only());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "agent endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let endpoint = endpoint.clone();
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "agent endpoint: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| certificate_user(cert));
            let allowed = user.as_deref() == Some(API_SERVER_USER);
            let service = service_fn(move |request| {
                let endpoint = endpoint.clone();
                let user = user.clone();
                async move {
                    let response = if allowed {
                        endpoint.route(request).await
                    } else {
                        status(
                            403,
                            "Forbidden",
                            format!(
                                "user {:?} may not use the node's endpoint; only {API_SERVER_USER} may",
                                user.unwrap_or_default()
                            ),
                        )
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "agent endpoint: connection ended with an error");
            }
        });
    }
    drop(listener);
    endpoint.sessions.cancel();
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("agent endpoint: closing connections still open at shutdown");
    }
}

/// A `metav1.Status` response.
fn status(code: u16, reason: &str, message: impl Into<String>) -> Response<Body> {
    let message = message.into();
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    let mut response = Response::new(full(serde_json::to_vec(&body).expect("JSON serialises")));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_request(message: impl Into<String>) -> Response<Body> {
    status(400, "BadRequest", message)
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The values of a comma-separated request header (all its occurrences).
fn header_values<'a>(request: &'a Request<Incoming>, name: &str) -> Vec<&'a str> {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

fn has_token(request: &Request<Incoming>, name: &str, token: &str) -> bool {
    header_values(request, name)
        .iter()
        .any(|v| v.eq_ignore_ascii_case(token))
}

/// A WebSocket handshake's answer (`101` with `Sec-WebSocket-Accept`), or `None` if the request
/// is not a WebSocket upgrade.
fn websocket_accept(request: &Request<Incoming>, protocol: &str) -> Option<Response<Body>> {
    if !has_token(request, "upgrade", "websocket") {
        return None;
    }
    let key = request.headers().get("sec-websocket-key")?;
    let accept = derive_accept_key(key.as_bytes());
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert("sec-websocket-accept", HeaderValue::from_str(&accept).ok()?);
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(protocol).ok()?,
    );
    Some(response)
}

impl Endpoint {
    async fn route(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_string();
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = request.method().clone();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => {
                let mut response = Response::new(full("ok"));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                response
            }
            (&Method::GET, ["containerLogs", namespace, pod, container]) => {
                self.logs(&request, namespace, pod, container)
            }
            (&Method::GET | &Method::POST, ["exec", namespace, pod, container]) => {
                self.exec(request, namespace, pod, container)
            }
            (&Method::GET | &Method::POST, ["portForward", namespace, pod]) => {
                self.port_forward(request, namespace, pod)
            }
            (_, ["containerLogs" | "exec" | "portForward", ..]) => status(
                405,
                "MethodNotAllowed",
                format!("{method} is not allowed on {path}"),
            ),
            _ => status(404, "NotFound", format!("no such endpoint: {path}")),
        }
    }

    /// The container, or the error response the client should see.
    fn container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<ContainerEntry, Box<Response<Body>>> {
        let Some(names) = self.pods.containers(namespace, pod) else {
            return Err(Box::new(status(
                404,
                "NotFound",
                format!("pod \"{pod}\" in namespace \"{namespace}\" is not running on this node"),
            )));
        };
        self.pods
            .container(namespace, pod, container)
            .ok_or_else(|| {
                Box::new(bad_request(format!(
                    "container {container} is not valid for pod {pod}; choose one of: [{}]",
                    names.join(" ")
                )))
            })
    }

    fn logs(
        &self,
        request: &Request<Incoming>,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Response<Body> {
        let options = match LogOptions::parse(request.uri().query(), jiff::Timestamp::now()) {
            Ok(options) => options,
            Err(e) => return bad_request(e),
        };
        let entry = match self.container(namespace, pod, container) {
            Ok(entry) => entry,
            Err(response) => return *response,
        };
        let path = if options.previous {
            match entry.previous_log_path {
                Some(path) => path,
                None => {
                    return bad_request(format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ));
                }
            }
        } else {
            match entry.log_path {
                Some(path) => path,
                None => {
                    return bad_request(format!(
                        "container \"{container}\" in pod \"{pod}\" is waiting to start"
                    ));
                }
            }
        };
        // A follower stops when this attempt of the container is no longer running; logs of a
        // previous attempt never grow.
        let pods = self.pods.clone();
        let (namespace, pod, container) = (
            namespace.to_string(),
            pod.to_string(),
            container.to_string(),
        );
        let attempt = entry.container_id.clone();
        let follow_current = !options.previous;
        let running = move || {
            follow_current
                && pods
                    .container(&namespace, &pod, &container)
                    .is_some_and(|e| e.running && e.container_id == attempt)
        };
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        tokio::task::spawn_blocking(move || {
            let mut emit = |chunk: Bytes| {
                if chunk.is_empty() {
                    return !tx.is_closed();
                }
                tx.blocking_send(chunk).is_ok()
            };
            if let Err(e) = logs::stream(&path, &options, &running, &mut emit) {
                tracing::warn!(path = %path.display(), error = %e, "reading a container log");
            }
        });
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
        });
        let mut response = Response::new(StreamBody::new(body).boxed());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }

    fn exec(
        &self,
        mut request: Request<Incoming>,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Response<Body> {
        let exec_request = match ExecRequest::parse(request.uri().query()) {
            Ok(r) => r,
            Err(e) => return bad_request(e),
        };
        let entry = match self.container(namespace, pod, container) {
            Ok(entry) => entry,
            Err(response) => return *response,
        };
        let Some(container_id) = entry.container_id.filter(|_| entry.running) else {
            return bad_request(format!(
                "container \"{container}\" in pod \"{pod}\" is not running"
            ));
        };
        if !has_token(&request, "upgrade", "websocket") {
            return bad_request(
                "unable to upgrade connection: this node serves exec over WebSocket \
                 (v5.channel.k8s.io, v4.channel.k8s.io) only",
            );
        }
        let Some(protocol) = exec::negotiate(header_values(&request, "sec-websocket-protocol"))
        else {
            return bad_request(
                "unable to upgrade connection: none of the offered WebSocket subprotocols is \
                 supported (v5.channel.k8s.io, v4.channel.k8s.io)",
            );
        };
        let Some(response) = websocket_accept(&request, protocol) else {
            return bad_request("unable to upgrade connection: missing Sec-WebSocket-Key");
        };
        let upgrade = hyper::upgrade::on(&mut request);
        let runtime = self.runtime.clone();
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    tokio::select! {
                        _ = exec::run(upgraded, protocol, runtime, container_id, exec_request) => {}
                        _ = sessions.cancelled() => {}
                    }
                }
                Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
            }
        });
        response
    }

    fn port_forward(
        &self,
        mut request: Request<Incoming>,
        namespace: &str,
        pod: &str,
    ) -> Response<Body> {
        let Some(sandbox_id) = self.pods.sandbox_id(namespace, pod) else {
            return status(
                404,
                "NotFound",
                format!("pod \"{pod}\" in namespace \"{namespace}\" is not running on this node"),
            );
        };
        let target = portforward::Target {
            runtime: self.runtime.clone(),
            sandbox_id,
            pod: format!("{namespace}/{pod}"),
        };
        let tunneled = header_values(&request, "sec-websocket-protocol")
            .contains(&portforward::TUNNELED_PROTOCOL);
        let response = if has_token(&request, "upgrade", "websocket") {
            if !tunneled {
                return bad_request(format!(
                    "unable to upgrade connection: port-forward over WebSocket needs the \
                     {} subprotocol",
                    portforward::TUNNELED_PROTOCOL
                ));
            }
            match websocket_accept(&request, portforward::TUNNELED_PROTOCOL) {
                Some(response) => response,
                None => {
                    return bad_request("unable to upgrade connection: missing Sec-WebSocket-Key");
                }
            }
        } else if has_token(&request, "upgrade", "SPDY/3.1") {
            if !header_values(&request, "x-stream-protocol-version")
                .contains(&portforward::PROTOCOL)
            {
                return bad_request(format!(
                    "unable to upgrade connection: X-Stream-Protocol-Version must offer {}",
                    portforward::PROTOCOL
                ));
            }
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            headers.insert(
                "x-stream-protocol-version",
                HeaderValue::from_static(portforward::PROTOCOL),
            );
            response
        } else {
            return bad_request(
                "unable to upgrade connection: port-forward needs an upgrade to SPDY/3.1 or to \
                 WebSocket with the SPDY/3.1+portforward.k8s.io subprotocol",
            );
        };
        let upgrade = hyper::upgrade::on(&mut request);
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            let upgraded = match upgrade.await {
                Ok(upgraded) => TokioIo::new(upgraded),
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward upgrade failed");
                    return;
                }
            };
            if tunneled {
                let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, None).await;
                let io = portforward::websocket_as_io(ws, sessions.clone());
                portforward::serve(io, target, sessions).await;
            } else {
                portforward::serve(upgraded, target, sessions).await;
            }
        });
        response
    }
}
