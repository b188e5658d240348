//! A small HTTPS client for the Kubernetes API, for tools that need to control exactly how
//! requests go over the wire: `visor bench` (one persistent keep-alive connection per worker,
//! sequential requests) and the end-to-end tests (malformed bodies, odd content types).
//!
//! It speaks HTTP/1.1 over rustls and authenticates with the kubeconfig's client certificate.
//! Controllers and agents use a full client library (`kube`) instead.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::kubeconfig::{Credentials, load_credentials};

/// Where a server is and how to talk to it; cheap to clone, opens [`Connection`]s.
#[derive(Clone)]
pub struct ApiClient {
    tls: TlsConnector,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    authority: String,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client for the current context of the kubeconfig at `path`.
    pub async fn from_kubeconfig(path: &std::path::Path) -> anyhow::Result<ApiClient> {
        ApiClient::new(&load_credentials(path)?).await
    }

    /// A client for `credentials`. Resolves the server's address once, so every connection
    /// goes to the same one.
    pub async fn new(credentials: &Credentials) -> anyhow::Result<ApiClient> {
        let uri: Uri = credentials
            .server
            .parse()
            .context("parsing the server URL")?;
        let authority = uri
            .authority()
            .context("the server URL has no host")?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(443);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("{host:?} is not a server name"))?;

        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(credentials.ca_pem.as_bytes()) {
            roots
                .add(cert.context("parsing the CA certificate")?)
                .context("adding the CA")?;
        }
        let chain = CertificateDer::pem_slice_iter(credentials.client_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(credentials.client_key_pem.as_bytes())
            .context("parsing the client key")?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("loading the client certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ApiClient {
            tls: TlsConnector::from(Arc::new(config)),
            addr,
            server_name,
            authority: authority.to_string(),
        })
    }

    /// The server's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens one keep-alive connection. Requests on it are sent one after another.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        // Small requests and replies: without this, Nagle's algorithm adds tens of milliseconds.
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .with_context(|| format!("TLS handshake with {}", self.addr))?;
        let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
        let task = tokio::spawn(async move {
            // The connection ends when the sender is dropped or the server closes it; either way
            // the next request reports it, so the error needs no handling here.
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            authority: self.authority.clone(),
            task,
        })
    }
}

/// One HTTP/1.1 connection to the server.
pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    authority: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response ({}) is not JSON: {}", self.status, self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Fails, naming the status and body, unless the status is `expected`.
    pub fn expect(self, expected: StatusCode) -> anyhow::Result<Response> {
        if self.status != expected {
            let mut text = self.text();
            text.truncate(500);
            bail!("expected {expected}, got {}: {text}", self.status);
        }
        Ok(self)
    }
}

impl Connection {
    /// Sends a request with a JSON body (if any) and reads the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<Response> {
        let request = self.request(method, path, "application/json", body.unwrap_or_default())?;
        self.send_request(request).await
    }

    /// Builds a request for `path` with the given content type, ready for [`Self::send_request`];
    /// callers may add or change headers first.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority)
            .header(ACCEPT, "application/json");
        if !body.is_empty() {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        Ok(builder.body(Full::new(body))?)
    }

    /// Sends a prepared request and reads the whole response.
    pub async fn send_request(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> anyhow::Result<Response> {
        let (status, headers, body) = self.open(request).await?;
        let body = body
            .collect()
            .await
            .context("reading a response body")?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Sends a GET and returns the response head with the body still streaming (for watches).
    pub async fn stream(&mut self, path: &str) -> anyhow::Result<(StatusCode, Incoming)> {
        let request = self.request(Method::GET, path, "application/json", Bytes::new())?;
        let (status, _, body) = self.open(request).await?;
        Ok((status, body))
    }

    async fn open(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, HeaderMap, Incoming)> {
        self.sender.ready().await.context("the connection closed")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("sending a request")?;
        let (parts, body) = response.into_parts();
        Ok((parts.status, parts.headers, body))
    }
}

/// Splits a streamed body into lines (watch events are newline-delimited JSON).
pub struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
}

impl Lines {
    pub fn new(body: Incoming) -> Lines {
        Lines {
            body,
            buffer: Vec::new(),
        }
    }

    /// The next complete line without its newline, or `None` once the body has ended.
    pub async fn next_line(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                return Ok(Some(line));
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame.context("reading a streamed body")?.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                None if self.buffer.is_empty() => return Ok(None),
                None => return Ok(Some(std::mem::take(&mut self.buffer))),
            }
        }
    }
}
