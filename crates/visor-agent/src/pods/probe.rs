//! Container probes — startup, liveness, readiness — with exec, httpGet and tcpSocket
//! handlers, thresholds and timing as upstream.
//!
//! One [`Prober`] task per running container that has probes. It runs the startup probe
//! until it succeeds (liveness and readiness wait for it), then liveness and readiness on
//! their own periods, and publishes results through a `watch` channel the pod worker reads:
//! `started`, `ready`, and `liveness_failed` (the worker then kills and restarts the
//! container, as the kubelet does).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::watch;

use crate::runtime::Runtime;

/// What the probes of one container have found so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeResults {
    pub started: bool,
    pub ready: bool,
    /// Set once liveness (or startup) reached its failure threshold, with the message.
    pub failed: Option<String>,
}

/// Where probes connect.
#[derive(Clone)]
pub struct ProbeTarget {
    pub runtime: Arc<dyn Runtime>,
    pub container_id: String,
    pub pod_ip: String,
}

/// Starts the probes of `container`; the task ends when the returned handle is dropped
/// (aborted) or liveness fails.
pub fn spawn(
    container: &Container,
    target: ProbeTarget,
) -> (watch::Receiver<ProbeResults>, tokio::task::JoinHandle<()>) {
    let initial = ProbeResults {
        started: container.startup_probe.is_none(),
        ready: container.readiness_probe.is_none(),
        failed: None,
    };
    let (sender, receiver) = watch::channel(initial);
    let container = container.clone();
    let task = tokio::spawn(async move { run(container, target, sender).await });
    (receiver, task)
}

async fn run(container: Container, target: ProbeTarget, results: watch::Sender<ProbeResults>) {
    if let Some(startup) = &container.startup_probe {
        match until_success(startup, &container, &target).await {
            Ok(()) => results.send_modify(|r| r.started = true),
            Err(message) => {
                results
                    .send_modify(|r| r.failed = Some(format!("Startup probe failed: {message}")));
                return;
            }
        }
    }
    let liveness = container.liveness_probe.clone();
    let readiness = container.readiness_probe.clone();
    let live = async {
        if let Some(probe) = &liveness {
            if let Err(message) = watch_failures(probe, &container, &target).await {
                results
                    .send_modify(|r| r.failed = Some(format!("Liveness probe failed: {message}")));
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    let ready = async {
        if let Some(probe) = &readiness {
            readiness_loop(probe, &container, &target, &results).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = live => {}
        _ = ready => {}
    }
}

fn timing(probe: &Probe) -> (Duration, Duration, Duration, i32, i32) {
    let secs =
        |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    (
        secs(probe.initial_delay_seconds, 0),
        secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
        secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        probe.success_threshold.unwrap_or(1).max(1),
        probe.failure_threshold.unwrap_or(3).max(1),
    )
}

/// Probes until one success; fails after `failureThreshold` consecutive failures.
async fn until_success(
    probe: &Probe,
    container: &Container,
    target: &ProbeTarget,
) -> Result<(), String> {
    until_failed(probe, container, target, true).await
}

/// Probes forever; returns once failures reach the threshold in a row.
async fn watch_failures(
    probe: &Probe,
    container: &Container,
    target: &ProbeTarget,
) -> Result<(), String> {
    until_failed(probe, container, target, false).await
}

/// Probes until `failureThreshold` failures in a row (an error) or, with `stop_on_success`,
/// the first success (`Ok`); a success resets the failure count.
async fn until_failed(
    probe: &Probe,
    container: &Container,
    target: &ProbeTarget,
    stop_on_success: bool,
) -> Result<(), String> {
    let (delay, period, timeout, _, failures_allowed) = timing(probe);
    tokio::time::sleep(delay).await;
    let mut failures = 0;
    loop {
        match check(probe, container, target, timeout).await {
            Ok(()) if stop_on_success => return Ok(()),
            Ok(()) => failures = 0,
            Err(message) => {
                failures += 1;
                if failures >= failures_allowed {
                    return Err(message);
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

async fn readiness_loop(
    probe: &Probe,
    container: &Container,
    target: &ProbeTarget,
    results: &watch::Sender<ProbeResults>,
) {
    let (delay, period, timeout, successes_needed, failures_allowed) = timing(probe);
    tokio::time::sleep(delay).await;
    let (mut successes, mut failures) = (0, 0);
    loop {
        match check(probe, container, target, timeout).await {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if successes >= successes_needed {
                    results.send_if_modified(|r| !std::mem::replace(&mut r.ready, true));
                }
            }
            Err(message) => {
                successes = 0;
                failures += 1;
                if failures >= failures_allowed {
                    tracing::debug!(container = %container.name, "readiness probe failed: {message}");
                    results.send_if_modified(|r| std::mem::replace(&mut r.ready, false));
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// One probe attempt.
async fn check(
    probe: &Probe,
    container: &Container,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let argv = exec.command.clone().unwrap_or_default();
        let output = target
            .runtime
            .exec_sync(&target.container_id, &argv, timeout)
            .await
            .map_err(|e| e.to_string())?;
        if output.exit_code == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        return Err(if text.is_empty() {
            format!("command {argv:?} exited with {}", output.exit_code)
        } else {
            text
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let port = port_number(&tcp.port, container)?;
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(http) = &probe.http_get {
        let host = http.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let port = port_number(&http.port, container)?;
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let scheme = http.scheme.clone().unwrap_or_else(|| "HTTP".into());
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return match tokio::time::timeout(timeout, http_get(&scheme, &host, port, &path, &headers))
            .await
        {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Err(format!(
                "Get \"{}://{host}:{port}{path}\": {e}",
                scheme.to_lowercase()
            )),
            Err(_) => Err(format!(
                "Get \"{}://{host}:{port}{path}\": context deadline exceeded",
                scheme.to_lowercase()
            )),
        };
    }
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by this host".into());
    }
    Err("the probe names no handler".into())
}

fn port_number(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// An HTTP GET, answering the status code. HTTPS probes skip certificate verification, as
/// upstream's do.
async fn http_get(
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    use http_body_util::Empty;
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    let mut request = http::Request::get(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::USER_AGENT, "kube-probe/1.32");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let code = if scheme.eq_ignore_ascii_case("HTTPS") {
        let tls = crate::tls::insecure_client_config();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let name =
            rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let stream = connector
            .connect(name, stream)
            .await
            .map_err(|e| e.to_string())?;
        send(hyper_util::rt::TokioIo::new(stream), request).await?
    } else {
        send(hyper_util::rt::TokioIo::new(stream), request).await?
    };
    Ok(code)
}

async fn send<T>(
    io: T,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}
