//! `kubectl logs`, `kubectl exec` and `kubectl port-forward` end to end: the real kubectl
//! against a real `visor server`, which proxies to an agent endpoint (the real
//! `visor_agent::server::serve`) running in this test process on loopback.
//!
//! The agent's runtime and pod directory here are TEST DOUBLES: a "container" is a host
//! process started with the requested argv and the "pod network" is the host's loopback. They
//! let this test check the API server's proxying and the wire protocols kubectl 1.32 speaks
//! without runc; pods running for real are covered by the agent's own tests.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestServer};
use visor_agent::server::testing::HostProcessRuntime;
use visor_agent::server::{ContainerEntry, PodDirectory, agent_tls_config, serve};

/// TEST DOUBLE: pod `default/web` with one running container `app`.
struct WebPod {
    log: PathBuf,
}

impl PodDirectory for WebPod {
    fn sandbox_id(&self, namespace: &str, pod: &str) -> Option<String> {
        (namespace == "default" && pod == "web").then(|| "sandbox-web".into())
    }
    fn container(&self, namespace: &str, pod: &str, container: &str) -> Option<ContainerEntry> {
        (namespace == "default" && pod == "web" && container == "app").then(|| ContainerEntry {
            container_id: Some("ctr-app".into()),
            running: true,
            log_path: Some(self.log.clone()),
            previous_log_path: None,
        })
    }
    fn containers(&self, namespace: &str, pod: &str) -> Option<Vec<String>> {
        (namespace == "default" && pod == "web").then(|| vec!["app".into()])
    }
}

/// Echoes each connection back prefixed with "echo:" once the client half-closes.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let _ = conn.read_to_end(&mut got);
                let _ = conn.write_all(b"echo:");
                let _ = conn.write_all(&got);
            });
        }
    });
    port
}

#[test]
fn kubectl_logs_exec_and_port_forward_reach_the_agent() {
    let server = TestServer::start(Backend::Sqlite);
    let pki = server.data_dir().join("pki");
    let read = |name: &str| std::fs::read_to_string(pki.join(name)).unwrap();
    // The API server's own serving certificate (CA-signed, valid for 127.0.0.1) serves as the
    // test agent's.
    let tls = agent_tls_config(&read("ca.crt"), &read("server.crt"), &read("server.key")).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("app.log");
    std::fs::write(
        &log,
        "2026-11-21T10:00:00Z stdout F hello from app\n\
         2026-11-21T10:00:01Z stderr P warn\n\
         2026-11-21T10:00:02Z stderr F ing\n\
         2026-11-21T10:00:03Z stdout F ready\n",
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let agent_port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = runtime.spawn(serve(
        listener,
        tls,
        Arc::new(HostProcessRuntime::default()),
        Arc::new(WebPod { log: log.clone() }),
        async move {
            let _ = stopped.await;
        },
    ));

    server.ok_stdin(
        &["create", "-f", "-"],
        &format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"host-1"}},
               "status":{{"addresses":[{{"type":"InternalIP","address":"127.0.0.1"}}],
                          "daemonEndpoints":{{"kubeletEndpoint":{{"Port":{agent_port}}}}}}}}}"#
        ),
    );
    server.ok_stdin(
        &["create", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"default"},
           "spec":{"nodeName":"host-1","containers":[{"name":"app","image":"busybox"}]}}"#,
    );
    server.ok_stdin(
        &["create", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"unbound","namespace":"default"},
           "spec":{"containers":[{"name":"app","image":"busybox"}]}}"#,
    );
    server.ok(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);

    // Logs: whole, tail with timestamps, and an unbound pod.
    assert_eq!(
        server.ok(&["logs", "web"]),
        "hello from app\nwarning\nready\n"
    );
    assert_eq!(
        server.ok(&["logs", "web", "-c", "app", "--tail=1", "--timestamps"]),
        "2026-11-21T10:00:03Z ready\n"
    );
    let error = server.fails(&["logs", "unbound"]);
    assert!(
        error.contains("pod unbound does not have a host assigned"),
        "{error}"
    );
    let error = server.fails(&["logs", "web", "-c", "nope"]);
    assert!(
        error.contains("container nope is not valid for pod web"),
        "{error}"
    );

    // Follow: a new line shows up while kubectl is attached.
    let mut follow = server.kubectl_stream(&["logs", "-f", "web", "--tail=1"]);
    follow.wait_for(Duration::from_secs(30), |l| l == "ready");
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(file, "2026-11-21T10:00:04Z stdout F followed").unwrap();
    follow.wait_for(Duration::from_secs(30), |l| l == "followed");
    drop(follow);

    // Exec: output, stderr, and the exit code as kubectl's own.
    let output = server.kubectl(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert!(String::from_utf8_lossy(&output.stderr).contains("err"));
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let upper = server.ok_stdin(&["exec", "-i", "web", "--", "tr", "a-z", "A-Z"], "hello\n");
    assert_eq!(upper, "HELLO\n");

    // Port-forward through kubectl's default (SPDY tunneled in WebSocket).
    let echo_port = echo_server();
    let local_port = common::free_port();
    let mut forward = server.kubectl_stream(&[
        "port-forward",
        "pod/web",
        &format!("{local_port}:{echo_port}"),
    ]);
    forward.wait_for(Duration::from_secs(30), |l| {
        l.starts_with("Forwarding from 127.0.0.1")
    });
    let mut conn = TcpStream::connect(("127.0.0.1", local_port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(b"ping").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "echo:ping");
    drop(forward);

    let _ = stop.send(());
    runtime.block_on(agent).unwrap();
}
