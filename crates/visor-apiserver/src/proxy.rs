//! The pod subresources served by the node a pod runs on: `log`, `exec`, `attach` and
//! `portforward`, proxied to that node's agent.
//!
//! Flow, as upstream's: find the pod (it must be bound to a node), pick the container, find
//! the Node's address (`status.addresses` InternalIP) and agent port
//! (`status.daemonEndpoints.kubeletEndpoint.Port`), connect over TLS verifying the agent's
//! serving certificate against the cluster CA, authenticate as `system:visor-apiserver` with a
//! client certificate issued at start, and relay. Logs are relayed as a streamed body; exec,
//! attach and port-forward are HTTP/1.1 upgrades (WebSocket, SPDY, SPDY tunneled in
//! WebSocket): the upgrade request goes to the agent, its `101` answer goes back to the client,
//! and then bytes are copied both ways. This side never looks inside those protocols.
//!
//! Authorization: the request was already authorised for its verb on the subresource
//! (`get pods/exec` for a WebSocket `GET`, `create` for a SPDY `POST`). Upstream 1.35 closed the
//! gap this leaves (`AuthorizePodWebsocketUpgradeCreatePermission`): a WebSocket upgrade to
//! `exec`, `attach` or `portforward` must also be allowed to `create` the subresource. Visor
//! does the same, so `get pods/exec` alone never runs a command.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::errors::{ApiError, ApiResult};
use crate::handler::{Body, RequestBody};
use crate::kinds::Subresource;
use crate::pki::Pki;
use crate::registry::{Registry, Scope};
use crate::request::Query;

/// The identity the API server presents to agents.
pub const API_SERVER_USER: &str = "system:visor-apiserver";
/// Where agents listen when a Node does not say (upstream's kubelet port).
const DEFAULT_AGENT_PORT: u16 = 10250;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An error answer from an agent larger than this is cut.
const MAX_ERROR_BODY: usize = 64 * 1024;
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Request headers an upgrade needs the agent to see; nothing else (no credentials) is passed.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// Connects to agents as the API server.
pub struct NodeProxy {
    tls: Arc<rustls::ClientConfig>,
}

impl NodeProxy {
    /// Issues the API server's client certificate for agents from the cluster CA and prepares
    /// a TLS client that trusts only that CA.
    pub fn new(pki: &Pki) -> anyhow::Result<NodeProxy> {
        let (cert_pem, key_pem) = pki
            .issue_client_cert(API_SERVER_USER, &[])
            .context("issuing the API server's client certificate for agents")?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                CertificateDer::from_pem_slice(pki.ca_pem().as_bytes())
                    .context("parsing the cluster CA")?,
            )
            .context("trusting the cluster CA")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?],
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?,
            )
            .context("loading the API server's client certificate")?;
        // Upgrades are HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(NodeProxy {
            tls: Arc::new(config),
        })
    }

    /// Serves `GET|POST /api/v1/namespaces/NS/pods/NAME/{log,exec,attach,portforward}`.
    ///
    /// Guarantees: errors are Kubernetes Status objects — 404 for a missing pod, 400 for an
    /// unbound pod, a missing or unknown container, or a container that has not started; 503
    /// when the agent cannot be reached or fails the TLS handshake; the agent's own Status (and
    /// code) when it refuses. Only the upgrade headers are forwarded to the agent.
    pub async fn serve(
        &self,
        registry: &Registry,
        mut request: Request<RequestBody>,
        scope: &Scope,
        name: &str,
        subresource: Subresource,
    ) -> ApiResult<Response<Body>> {
        let method = request.method().clone();
        let upgrading = request.headers().contains_key(header::UPGRADE);
        let allowed = match subresource {
            Subresource::Log => method == Method::GET,
            _ => method == Method::GET || method == Method::POST,
        };
        if !allowed {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} pods/{})",
                subresource.name()
            )));
        }
        let namespace = scope.namespace.clone().unwrap_or_default();
        if upgrading && method == Method::GET && subresource != Subresource::Log {
            authorize_create(&namespace, name, subresource)?;
        }
        let pod: Value =
            serde_json::from_slice(&registry.get(scope, name, &Query::default()).await?)
                .map_err(|e| ApiError::internal(e.to_string()))?;
        let node_name = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(format!("pod {name} does not have a host assigned"))
            })?;
        let query = request.uri().query().unwrap_or("").to_string();
        let container_param = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "container")
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty());
        // The agent's query: the client's, less `container` (it goes into the path).
        let forwarded: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "container"),
            )
            .finish();
        let path = match subresource {
            Subresource::PortForward => format!("/portForward/{}/{}", enc(&namespace), enc(name)),
            _ => {
                let container = pick_container(&pod, name, container_param.as_deref())?;
                check_started(&pod, name, &container, subresource)?;
                let prefix = match subresource {
                    Subresource::Log => "containerLogs",
                    Subresource::Attach => "attach",
                    _ => "exec",
                };
                format!(
                    "/{prefix}/{}/{}/{}",
                    enc(&namespace),
                    enc(name),
                    enc(&container)
                )
            }
        };
        let path = if forwarded.is_empty() {
            path
        } else {
            format!("{path}?{forwarded}")
        };
        let (address, port) = agent_endpoint(registry, node_name).await?;

        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
        let io = self.connect(node_name, address, port).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| unavailable(node_name, address, port, e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "agent connection ended");
            }
        });
        let mut outgoing = Request::builder()
            .method(method.clone())
            .uri(&path)
            .header(header::HOST, format!("{}:{port}", host_text(address)));
        if upgrading {
            for name in UPGRADE_HEADERS {
                for value in request.headers().get_all(*name) {
                    outgoing = outgoing.header(*name, value);
                }
            }
        }
        let outgoing = outgoing
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiError::internal(format!("building the agent request: {e}")))?;
        let mut answer = sender
            .send_request(outgoing)
            .await
            .map_err(|e| unavailable(node_name, address, port, e))?;

        if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(ApiError::internal(
                    "the agent upgraded a request that asked for no upgrade",
                ));
            };
            let agent_upgrade = hyper::upgrade::on(&mut answer);
            let mut response = Response::new(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *response.headers_mut() = answer.headers().clone();
            tokio::spawn(async move {
                let (client, agent) = match tokio::join!(client_upgrade, agent_upgrade) {
                    (Ok(client), Ok(agent)) => (client, agent),
                    (client, agent) => {
                        tracing::debug!(
                            client = client.is_ok(),
                            agent = agent.is_ok(),
                            "stream upgrade failed"
                        );
                        return;
                    }
                };
                let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
                    tracing::debug!(error = %e, "stream proxy ended");
                }
            });
            return Ok(response);
        }
        if !answer.status().is_success() {
            return Err(agent_error(answer).await);
        }
        // A log: relay the body as it arrives (follow keeps it open).
        let content_type = answer
            .headers()
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("text/plain"));
        let body = futures::stream::unfold(answer.into_body(), |mut body| async move {
            loop {
                match body.frame().await? {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => return Some((Ok::<_, Infallible>(Frame::data(data)), body)),
                        Err(_) => continue,
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "log stream from the agent ended");
                        return None;
                    }
                }
            }
        });
        let mut response = Response::new(StreamBody::new(body).boxed_unsync());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
        Ok(response)
    }

    async fn connect(
        &self,
        node: &str,
        address: IpAddr,
        port: u16,
    ) -> ApiResult<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((address, port)))
            .await
            .map_err(|_| unavailable(node, address, port, "timed out connecting"))?
            .map_err(|e| unavailable(node, address, port, e))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(self.tls.clone())
            .connect(ServerName::IpAddress(address.into()), tcp)
            .await
            .map_err(|e| unavailable(node, address, port, format!("TLS: {e}")))
    }
}

fn enc(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn host_text(address: IpAddr) -> String {
    match address {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn unavailable(node: &str, address: IpAddr, port: u16, error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        503,
        "ServiceUnavailable",
        format!(
            "the agent of node \"{node}\" at {}:{port} cannot be reached: {error}",
            host_text(address)
        ),
    )
}

/// Upstream 1.35's check for WebSocket upgrades: `create` on the subresource as well.
fn authorize_create(namespace: &str, name: &str, subresource: Subresource) -> ApiResult<()> {
    let Some(requester) = crate::rbac::Requester::current() else {
        return Ok(());
    };
    let mut attrs = crate::rbac::Attributes::resource("create", "", "pods", namespace, name);
    attrs.subresource = subresource.name().to_string();
    if requester
        .authorizer
        .authorize(&requester.identity, &attrs)
        .allowed
    {
        Ok(())
    } else {
        Err(attrs.forbidden(&requester.identity.user))
    }
}

/// The container a request is for: the one named, else the pod's only container, else the
/// one the `kubectl.kubernetes.io/default-container` annotation names.
fn pick_container(pod: &Value, pod_name: &str, wanted: Option<&str>) -> ApiResult<String> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    if let Some(wanted) = wanted {
        if containers
            .iter()
            .chain(&init)
            .chain(&ephemeral)
            .any(|c| c == wanted)
        {
            return Ok(wanted.to_string());
        }
        return Err(ApiError::bad_request(format!(
            "container {wanted} is not valid for pod {pod_name}"
        )));
    }
    if containers.len() == 1 {
        return Ok(containers[0].clone());
    }
    if let Some(default) = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .and_then(Value::as_str)
        .filter(|d| containers.iter().any(|c| c == d))
    {
        return Ok(default.to_string());
    }
    let mut message = format!(
        "a container name must be specified for pod {pod_name}, choose one of: [{}]",
        containers.join(" ")
    );
    if !init.is_empty() {
        message.push_str(&format!(
            " or one of the init containers: [{}]",
            init.join(" ")
        ));
    }
    Err(ApiError::bad_request(message))
}

/// Refuses a container that has not started, from the pod's status, as upstream words it:
/// logs need it to have run at least once, exec and attach need it running now. A container
/// the status does not mention yet is left to the agent to judge.
fn check_started(
    pod: &Value,
    pod_name: &str,
    container: &str,
    subresource: Subresource,
) -> ApiResult<()> {
    let status = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .filter_map(|field| {
        pod.pointer(&format!("/status/{field}"))
            .and_then(Value::as_array)
    })
    .flatten()
    .find(|s| s.get("name").and_then(Value::as_str) == Some(container));
    let Some(status) = status else { return Ok(()) };
    let state = &status["state"];
    let ran_before = status.pointer("/lastState/terminated").is_some();
    if let Some(waiting) = state.get("waiting")
        && (subresource != Subresource::Log || !ran_before)
    {
        let reason = waiting.get("reason").and_then(Value::as_str).unwrap_or("");
        let mut message =
            format!("container \"{container}\" in pod \"{pod_name}\" is waiting to start");
        if !reason.is_empty() {
            message.push_str(&format!(": {reason}"));
        }
        return Err(ApiError::bad_request(message));
    }
    if subresource != Subresource::Log && state.get("terminated").is_some() {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{pod_name}\" is not running"
        )));
    }
    Ok(())
}

/// The Node's InternalIP (else any address that is an IP) and its agent port.
async fn agent_endpoint(registry: &Registry, node: &str) -> ApiResult<(IpAddr, u16)> {
    let def = registry
        .catalog
        .lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let scope = Scope {
        def,
        namespace: None,
    };
    let bytes = registry
        .get(&scope, node, &Query::default())
        .await
        .map_err(|e| {
            if e.code == 404 {
                ApiError::bad_request(format!("node \"{node}\" of the pod does not exist"))
            } else {
                e
            }
        })?;
    let node_obj: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(e.to_string()))?;
    let addresses = node_obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ip_of = |kind: Option<&str>| {
        addresses.iter().find_map(|a| {
            let matches = kind.is_none_or(|k| a.get("type").and_then(Value::as_str) == Some(k));
            matches
                .then(|| {
                    a.get("address")
                        .and_then(Value::as_str)?
                        .parse::<IpAddr>()
                        .ok()
                })
                .flatten()
        })
    };
    let address = ip_of(Some("InternalIP"))
        .or_else(|| ip_of(None))
        .ok_or_else(|| {
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("node \"{node}\" has no address in its status"),
            )
        })?;
    let port = node_obj
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_AGENT_PORT);
    Ok((address, port))
}

/// The agent's refusal as the client's error: its Status if it sent one, else its text.
async fn agent_error(answer: Response<Incoming>) -> ApiError {
    let code = answer.status().as_u16();
    let mut collected = Vec::new();
    let mut body = answer.into_body();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            collected.extend_from_slice(&data);
            if collected.len() > MAX_ERROR_BODY {
                collected.truncate(MAX_ERROR_BODY);
                break;
            }
        }
    }
    let status: Option<Value> = serde_json::from_slice(&collected).ok();
    let message = status
        .as_ref()
        .and_then(|s| s.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&collected).trim().to_string());
    let reason: &'static str = match code {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    ApiError::new(code, reason, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": { "name": "web", "annotations": {} },
            "spec": {
                "nodeName": "n1",
                "initContainers": [ { "name": "setup" } ],
                "containers": [ { "name": "app" }, { "name": "sidecar" } ],
            },
            "status": {
                "containerStatuses": [
                    { "name": "app", "state": { "running": {} } },
                    { "name": "sidecar", "state": { "waiting": { "reason": "ContainerCreating" } } },
                ],
                "initContainerStatuses": [
                    { "name": "setup", "state": { "terminated": { "exitCode": 0 } } },
                ],
            },
        })
    }

    #[test]
    fn container_choice_follows_upstream() {
        let mut p = pod();
        assert_eq!(
            pick_container(&p, "web", Some("sidecar")).unwrap(),
            "sidecar"
        );
        assert_eq!(pick_container(&p, "web", Some("setup")).unwrap(), "setup");
        let err = pick_container(&p, "web", Some("nope")).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (400, "container nope is not valid for pod web")
        );
        let err = pick_container(&p, "web", None).unwrap_err();
        assert_eq!(
            err.message,
            "a container name must be specified for pod web, choose one of: [app sidecar] or one of the init containers: [setup]"
        );
        p["metadata"]["annotations"][DEFAULT_CONTAINER_ANNOTATION] = json!("sidecar");
        assert_eq!(pick_container(&p, "web", None).unwrap(), "sidecar");
        p["spec"]["containers"] = json!([{ "name": "only" }]);
        assert_eq!(pick_container(&p, "web", None).unwrap(), "only");
    }

    #[test]
    fn containers_must_have_started() {
        let p = pod();
        assert!(check_started(&p, "web", "app", Subresource::Exec).is_ok());
        let err = check_started(&p, "web", "sidecar", Subresource::Log).unwrap_err();
        assert_eq!(
            err.message,
            "container \"sidecar\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        // A finished init container still has logs, but nothing to exec into.
        assert!(check_started(&p, "web", "setup", Subresource::Log).is_ok());
        let err = check_started(&p, "web", "setup", Subresource::Exec).unwrap_err();
        assert_eq!(
            err.message,
            "container \"setup\" in pod \"web\" is not running"
        );
        assert!(check_started(&p, "web", "unreported", Subresource::Exec).is_ok());
    }
}
