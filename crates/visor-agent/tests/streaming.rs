//! The agent's streaming endpoint end to end, over real TLS on loopback: container logs,
//! `exec` over the v5 WebSocket channel protocol, and port-forward over SPDY/3.1 (tunneled in
//! WebSocket and plain), as kubectl drives them through the API server.
//!
//! The runtime here is a TEST DOUBLE ([`HostProcessRuntime`]): "containers" are host processes
//! started with the requested argv, and a pod's network is the host's loopback. It exists to
//! exercise the endpoint's protocols; the real runtimes have their own tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use visor_agent::runtime::TerminalSize;
use visor_agent::server::spdy::{Codec, FLAG_FIN, Frame};
use visor_agent::server::testing::HostProcessRuntime;
use visor_agent::server::{ContainerEntry, PodDirectory, agent_tls_config, serve};

const TIMEOUT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------
// Test doubles

/// TEST DOUBLE directory: one pod `default/web` with a running container `app` and a stopped
/// one `old`.
struct OnePod {
    log: PathBuf,
    previous_log: PathBuf,
}

impl PodDirectory for OnePod {
    fn sandbox_id(&self, namespace: &str, pod: &str) -> Option<String> {
        (namespace == "default" && pod == "web").then(|| "sandbox-1".to_string())
    }
    fn container(&self, namespace: &str, pod: &str, container: &str) -> Option<ContainerEntry> {
        if namespace != "default" || pod != "web" {
            return None;
        }
        match container {
            "app" => Some(ContainerEntry {
                container_id: Some("ctr-1".into()),
                running: true,
                log_path: Some(self.log.clone()),
                previous_log_path: Some(self.previous_log.clone()),
            }),
            "old" => Some(ContainerEntry {
                container_id: Some("ctr-0".into()),
                running: false,
                log_path: Some(self.previous_log.clone()),
                previous_log_path: None,
            }),
            _ => None,
        }
    }
    fn containers(&self, namespace: &str, pod: &str) -> Option<Vec<String>> {
        (namespace == "default" && pod == "web").then(|| vec!["app".into(), "old".into()])
    }
}

// ------------------------------------------------------------------------------------------
// Certificates and the running endpoint

struct Pki {
    ca_pem: String,
    server: (String, String),
    apiserver: (String, String),
    stranger: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca_cert.der(), &ca_key).unwrap();
    let leaf = |cn: &str, server: bool| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        if server {
            params.subject_alt_names =
                vec![SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]))];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca_cert.pem(),
        server: leaf("node-1", true),
        apiserver: leaf("system:visor-apiserver", false),
        stranger: leaf("mallory", false),
    }
}

struct Agent {
    addr: SocketAddr,
    pki: Pki,
    runtime: Arc<HostProcessRuntime>,
    _dir: tempfile::TempDir,
    log: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl Agent {
    async fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let previous_log = dir.path().join("app-previous.log");
        std::fs::write(
            &log,
            "2026-11-21T10:00:00.1Z stdout F hello from app\n\
             2026-11-21T10:00:01Z stderr P warn\n\
             2026-11-21T10:00:02Z stderr F ing: disk 91%\n\
             2026-11-21T10:00:03Z stdout F ready\n",
        )
        .unwrap();
        std::fs::write(
            &previous_log,
            "2026-11-21T09:00:00Z stdout F crashed: exit 1\n",
        )
        .unwrap();
        let pki = pki();
        let tls = agent_tls_config(&pki.ca_pem, &pki.server.0, &pki.server.1).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let runtime = Arc::new(HostProcessRuntime::default());
        let pods = Arc::new(OnePod {
            log: log.clone(),
            previous_log,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let serving = tokio::spawn(serve(listener, tls, runtime.clone(), pods, async move {
            let _ = stopped.await;
        }));
        Agent {
            addr,
            pki,
            runtime,
            _dir: dir,
            log,
            stop: Some(stop),
            serving: Some(serving),
        }
    }

    async fn tls(&self, identity: &(String, String)) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(identity.0.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).unwrap(),
        )
        .unwrap();
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// A plain GET as the API server; returns status and body.
    async fn get(&self, path: &str) -> (u16, String) {
        self.get_as(&self.pki.apiserver.clone(), path).await
    }

    async fn get_as(&self, identity: &(String, String), path: &str) -> (u16, String) {
        let io = TokioIo::new(self.tls(identity).await);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::get(path)
            .header("host", "node")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let code = response.status().as_u16();
        let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
            .await
            .expect("body in time")
            .unwrap()
            .to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    async fn websocket(&self, path: &str, protocol: &str) -> WebSocketStream<TlsStream<TcpStream>> {
        let tls = self.tls(&self.pki.apiserver.clone()).await;
        let mut request = format!("wss://127.0.0.1:{}{path}", self.addr.port())
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
        let (ws, response) = tokio_tungstenite::client_async(request, tls).await.unwrap();
        assert_eq!(
            response.headers()["sec-websocket-protocol"]
                .to_str()
                .unwrap(),
            protocol
        );
        ws
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(TIMEOUT, self.serving.take().unwrap())
            .await
            .expect("the endpoint stops")
            .unwrap();
    }
}

// ------------------------------------------------------------------------------------------
// Logs

#[tokio::test]
async fn logs_show_what_kubectl_logs_would() {
    let agent = Agent::start().await;
    let (code, body) = agent.get("/containerLogs/default/web/app").await;
    assert_eq!(code, 200);
    assert_eq!(body, "hello from app\nwarning: disk 91%\nready\n");

    let (_, body) = agent
        .get("/containerLogs/default/web/app?tailLines=1&timestamps=true")
        .await;
    assert_eq!(body, "2026-11-21T10:00:03Z ready\n");

    let (_, body) = agent
        .get("/containerLogs/default/web/app?previous=true")
        .await;
    assert_eq!(body, "crashed: exit 1\n");

    let (code, body) = agent.get("/containerLogs/default/web/nope").await;
    assert_eq!(code, 400);
    assert!(body.contains("choose one of: [app old]"), "{body}");

    let (code, body) = agent.get("/containerLogs/default/web/old?previous=1").await;
    assert_eq!(code, 400);
    assert!(
        body.contains("previous terminated container \\\"old\\\""),
        "{body}"
    );

    let (code, body) = agent
        .get("/containerLogs/default/web/app?tailLines=x")
        .await;
    assert_eq!(code, 400);
    assert!(body.contains("tailLines"), "{body}");

    let (code, _) = agent.get("/containerLogs/other/web/app").await;
    assert_eq!(code, 404);
    agent.shutdown().await;
}

#[tokio::test]
async fn follow_streams_new_lines() {
    let agent = Agent::start().await;
    let io = TokioIo::new(agent.tls(&agent.pki.apiserver.clone()).await);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/containerLogs/default/web/app?follow=true&tailLines=1")
        .header("host", "node")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    let mut seen = String::new();
    let mut read_until = async |want: &str, seen: &mut String| {
        while !seen.contains(want) {
            let frame = tokio::time::timeout(TIMEOUT, body.frame())
                .await
                .unwrap_or_else(|_| panic!("waiting for {want:?}; have {seen:?}"))
                .expect("the stream stays open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                seen.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    };
    read_until("ready\n", &mut seen).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&agent.log)
        .unwrap();
    use std::io::Write;
    writeln!(f, "2026-11-21T10:00:04Z stdout F served a request").unwrap();
    read_until("served a request\n", &mut seen).await;
    assert_eq!(seen, "ready\nserved a request\n");
    drop(body);
    agent.shutdown().await;
}

#[tokio::test]
async fn only_the_api_server_may_use_the_endpoint() {
    let agent = Agent::start().await;
    let stranger = agent.pki.stranger.clone();
    let (code, body) = agent
        .get_as(&stranger, "/containerLogs/default/web/app")
        .await;
    assert_eq!(code, 403);
    assert!(body.contains("mallory"), "{body}");
    // Without a client certificate the handshake itself fails.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(agent.pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        roots
    })
    .with_no_client_auth();
    let tcp = TcpStream::connect(agent.addr).await.unwrap();
    let connected = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await;
    let refused = match connected {
        Err(_) => true,
        // TLS 1.3: the server's verdict arrives with the first read.
        Ok(mut tls) => {
            let _ = tls
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            !matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate is refused");
    agent.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// Exec

/// What the client saw of one exec session.
#[derive(Default, Debug)]
struct Seen {
    stdout: String,
    stderr: String,
    status: Option<Value>,
}

async fn drive(ws: &mut WebSocketStream<TlsStream<TcpStream>>) -> Seen {
    let mut seen = Seen::default();
    loop {
        let message = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("exec answers in time");
        let Some(message) = message else { break };
        match message.unwrap() {
            Message::Binary(data) => match data.first() {
                Some(1) => seen
                    .stdout
                    .push_str(std::str::from_utf8(&data[1..]).unwrap()),
                Some(2) => seen
                    .stderr
                    .push_str(std::str::from_utf8(&data[1..]).unwrap()),
                Some(3) => seen.status = Some(serde_json::from_slice(&data[1..]).unwrap()),
                other => panic!("unexpected channel {other:?}"),
            },
            Message::Close(frame) => {
                assert_eq!(
                    frame.map(|f| u16::from(f.code)),
                    Some(1000),
                    "a normal closure ends the session"
                );
            }
            _ => {}
        }
    }
    seen
}

fn exec_path(command: &[&str], extra: &str) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for part in command {
        query.append_pair("command", part);
    }
    format!("/exec/default/web/app?{}{extra}", query.finish())
}

#[tokio::test]
async fn exec_streams_output_and_the_exit_code() {
    let agent = Agent::start().await;
    let mut ws = agent
        .websocket(
            &exec_path(
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
                "&stdout=true&stderr=true",
            ),
            "v5.channel.k8s.io",
        )
        .await;
    let seen = drive(&mut ws).await;
    assert_eq!(seen.stdout, "out\n");
    assert_eq!(seen.stderr, "err\n");
    let status = seen.status.expect("a status on the error channel");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    let mut ws = agent
        .websocket(&exec_path(&["true"], "&stdout=1"), "v4.channel.k8s.io")
        .await;
    let seen = drive(&mut ws).await;
    assert_eq!(seen.status.unwrap()["status"], "Success");
    assert_eq!(
        *agent.runtime.exec_container_ids.lock().unwrap(),
        ["ctr-1", "ctr-1"],
        "the endpoint passes the container's runtime ID"
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn exec_takes_stdin_until_the_v5_close_signal_and_resizes() {
    let agent = Agent::start().await;
    let mut ws = agent
        .websocket(
            &exec_path(
                &["sh", "-c", "tr a-z A-Z; echo done"],
                "&stdin=true&stdout=true&tty=true",
            ),
            "v5.channel.k8s.io",
        )
        .await;
    ws.send(Message::Binary(Bytes::from_static(
        b"\x04{\"Width\":100,\"Height\":30}",
    )))
    .await
    .unwrap();
    ws.send(Message::Binary(Bytes::from_static(b"\x00hello ")))
        .await
        .unwrap();
    ws.send(Message::Binary(Bytes::from_static(b"\x00world\n")))
        .await
        .unwrap();
    // v5: stdin is finished.
    ws.send(Message::Binary(Bytes::from_static(&[255, 0])))
        .await
        .unwrap();
    let seen = drive(&mut ws).await;
    assert_eq!(seen.stdout, "HELLO WORLD\ndone\n");
    assert_eq!(seen.status.unwrap()["status"], "Success");
    assert_eq!(
        *agent.runtime.resizes.lock().unwrap(),
        vec![TerminalSize {
            width: 100,
            height: 30
        }]
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn exec_refuses_what_it_cannot_do() {
    let agent = Agent::start().await;
    let (code, body) = agent.get(&exec_path(&["ls"], "&stdout=1")).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("WebSocket"), "{body}");
    let (code, body) = agent.get("/exec/default/web/old?command=ls&stdout=1").await;
    assert_eq!(code, 400);
    assert!(body.contains("is not running"), "{body}");
    let (code, body) = agent.get("/exec/default/web/app?stdout=1").await;
    assert_eq!(code, 400);
    assert!(body.contains("command"), "{body}");
    agent.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// Port-forward

/// An echo server on loopback standing in for the pod's port; it answers each connection with
/// "echo:" and what it read, then closes.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = conn.read_to_end(&mut got).await;
                let _ = conn.write_all(b"echo:").await;
                let _ = conn.write_all(&got).await;
            });
        }
    });
    port
}

/// Plays kubectl's side of one forwarded connection over a SPDY byte stream: opens the error
/// and data streams for `port`, sends `payload` and half-closes, then collects what comes back
/// on each stream until both are finished.
async fn forward_once<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    port: u16,
    payload: &[u8],
) -> (String, String) {
    let mut codec = Codec::new();
    let mut out = BytesMut::new();
    let headers = |kind: &str| {
        vec![
            ("streamtype".to_string(), kind.to_string()),
            ("port".to_string(), port.to_string()),
            ("requestid".to_string(), "0".to_string()),
        ]
    };
    for (id, kind) in [(1, "error"), (3, "data")] {
        codec
            .encode(
                &Frame::SynStream {
                    stream_id: id,
                    associated_to: 0,
                    priority: 0,
                    flags: 0,
                    headers: headers(kind),
                },
                &mut out,
            )
            .unwrap();
    }
    // kubectl half-closes the error stream at once: it only reads it.
    codec
        .encode(
            &Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
            &mut out,
        )
        .unwrap();
    codec
        .encode(
            &Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::copy_from_slice(payload),
            },
            &mut out,
        )
        .unwrap();
    codec.encode(&Frame::Ping { id: 1 }, &mut out).unwrap();
    io.write_all(&out).await.unwrap();
    io.flush().await.unwrap();

    let mut reader = Codec::new();
    let mut buf = BytesMut::new();
    let (mut error, mut data) = (Vec::new(), Vec::new());
    let (mut error_done, mut data_done, mut replies, mut pong) = (false, false, 0, false);
    while !(error_done && data_done && pong) {
        match reader.decode(&mut buf).unwrap() {
            Some(Frame::SynReply { .. }) => replies += 1,
            Some(Frame::Ping { id: 1 }) => pong = true,
            Some(Frame::Data {
                stream_id,
                flags,
                data: bytes,
            }) => {
                assert_eq!(replies, 2, "data comes after both replies");
                let (sink, done) = if stream_id == 1 {
                    (&mut error, &mut error_done)
                } else {
                    (&mut data, &mut data_done)
                };
                sink.extend_from_slice(&bytes);
                *done |= flags & FLAG_FIN != 0;
            }
            Some(other) => panic!("unexpected frame {other:?}"),
            None => {
                let n = tokio::time::timeout(TIMEOUT, io.read_buf(&mut buf))
                    .await
                    .expect("port-forward answers in time")
                    .unwrap();
                assert!(n > 0, "connection closed early");
            }
        }
    }
    (
        String::from_utf8(error).unwrap(),
        String::from_utf8(data).unwrap(),
    )
}

#[tokio::test]
async fn port_forward_tunneled_in_websocket() {
    let agent = Agent::start().await;
    let port = echo_server().await;
    let ws = agent
        .websocket("/portForward/default/web", "SPDY/3.1+portforward.k8s.io")
        .await;
    // Bridge the tunnel to a local byte stream the SPDY client side reads and writes, as
    // kubectl's tunneling connection does: each write one binary message.
    let (mut client_io, bridge_io) = tokio::io::duplex(64 * 1024);
    let bridge = tokio::spawn(async move {
        let mut ws = ws;
        let (mut from_client, mut to_client) = tokio::io::split(bridge_io);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                n = from_client.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => ws
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .unwrap(),
                },
                message = ws.next() => match message {
                    Some(Ok(Message::Binary(data))) => {
                        to_client.write_all(&data).await.unwrap();
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
    });
    let (error, data) = forward_once(&mut client_io, port, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(error, "");
    assert_eq!(data, "echo:GET / HTTP/1.0\r\n\r\n");
    assert_eq!(
        *agent.runtime.forwarded_sandbox_ids.lock().unwrap(),
        ["sandbox-1"],
        "the endpoint passes the pod's sandbox ID"
    );
    drop(client_io);
    bridge.abort();
    agent.shutdown().await;
}

#[tokio::test]
async fn port_forward_over_plain_spdy_reports_a_closed_port() {
    let agent = Agent::start().await;
    let port = echo_server().await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let upgrade = async || {
        let io = TokioIo::new(agent.tls(&agent.pki.apiserver.clone()).await);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection.with_upgrades());
        let request = http::Request::post("/portForward/default/web")
            .header("host", "node")
            .header("connection", "Upgrade")
            .header("upgrade", "SPDY/3.1")
            .header("x-stream-protocol-version", "portforward.k8s.io")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status().as_u16(), 101);
        assert_eq!(
            response.headers()["x-stream-protocol-version"],
            "portforward.k8s.io"
        );
        TokioIo::new(hyper::upgrade::on(response).await.unwrap())
    };
    let mut io = upgrade().await;
    let (error, data) = forward_once(&mut io, port, b"ping").await;
    assert_eq!((error.as_str(), data.as_str()), ("", "echo:ping"));

    let mut io = upgrade().await;
    let (error, data) = forward_once(&mut io, closed, b"ping").await;
    assert_eq!(data, "");
    assert!(
        error.starts_with(&format!(
            "error forwarding port {closed} to pod default/web"
        )),
        "{error}"
    );
    let (code, body) = agent.get("/portForward/default/web").await;
    assert_eq!(code, 400, "{body}");
    agent.shutdown().await;
}

#[tokio::test]
async fn sessions_end_at_shutdown() {
    let agent = Agent::start().await;
    let mut ws = agent
        .websocket(
            &exec_path(&["sleep", "30"], "&stdout=1"),
            "v5.channel.k8s.io",
        )
        .await;
    let started = std::time::Instant::now();
    agent.shutdown().await;
    // The session is gone: the stream ends rather than waiting for `sleep 30`.
    let ended = tokio::time::timeout(TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok());
    assert!(started.elapsed() < Duration::from_secs(10));
}
