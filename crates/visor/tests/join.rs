//! Host credentials end to end: an agent joins with the server's join token (`POST /join`,
//! CSRs in, certificates out, private keys never sent), and with its certificate the real
//! kubectl may do what a node may — its own Node and Lease, the pods bound to it and what they
//! use — and nothing of another host's. Bad tokens, names and CSRs are refused as documented;
//! `visor token` creates and deletes join tokens.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::users::CertUser;
use common::{Backend, TestServer};
use rcgen::{CertificateParams, KeyPair};
use serde_json::{Value, json};

/// A POST /join answer: the status code and the body (a Status on errors).
fn join(server: &TestServer, token: &str, body: &Value) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = std::fs::read(server.data_dir().join("pki/ca.crt")).unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    runtime.block_on(async move {
        let mut config = kube::Config::new(url.parse().unwrap());
        config.root_cert = Some(
            rustls_pki_types::pem::PemObject::pem_slice_iter(&ca)
                .map(|c: Result<rustls_pki_types::CertificateDer, _>| c.unwrap().to_vec())
                .collect(),
        );
        config.auth_info.token = Some(token.to_string().into());
        let client = kube::Client::try_from(config).unwrap();
        let request = http::Request::post("/join")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap())
            .unwrap();
        match client.request::<Value>(request).await {
            Ok(answer) => (200, answer),
            Err(kube::Error::Api(status)) => (status.code, serde_json::to_value(&*status).unwrap()),
            Err(e) => panic!("POST /join: {e}"),
        }
    })
}

fn csr(names: &[&str]) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

/// A host that joined: its kubeconfig holds the issued certificate and its own key.
struct Host {
    user: CertUser,
}

impl Host {
    fn join(server: &TestServer, token: &str, name: &str) -> Host {
        let (client_key, client_csr) = csr(&[]);
        let (_, serving_csr) = csr(&["127.0.0.1", &format!("{name}.hosts.example")]);
        let body = json!({ "nodeName": name, "clientCsr": client_csr, "servingCsr": serving_csr });
        let (code, answer) = join(server, token, &body);
        assert_eq!(code, 200, "{answer}");
        let serving = answer["servingCertificate"].as_str().unwrap();
        assert!(
            serving.starts_with("-----BEGIN CERTIFICATE-----"),
            "{serving}"
        );
        let user = CertUser::with_certificate(
            server,
            "node",
            answer["caCertificate"].as_str().unwrap(),
            answer["clientCertificate"].as_str().unwrap(),
            &client_key.serialize_pem(),
        );
        Host { user }
    }

    fn kubectl(&self, args: &[&str], input: Option<&str>) -> Output {
        match input {
            Some(input) => self.user.kubectl_stdin(args, input),
            None => self.user.kubectl(args),
        }
    }

    fn ok(&self, args: &[&str], input: Option<&str>) -> String {
        let out = self.kubectl(args, input);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn forbidden(&self, args: &[&str], input: Option<&str>) -> String {
        let out = self.kubectl(args, input);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && (err.contains("Forbidden") || err.contains("forbidden")),
            "kubectl {args:?} should be forbidden: {err}{}",
            String::from_utf8_lossy(&out.stdout)
        );
        err
    }
}

fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not true after 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pod(name: &str, node: &str, secret: &str, config_map: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "team-a" },
        "spec": {
            "nodeName": node,
            "volumes": [{ "name": "s", "secret": { "secretName": secret } }],
            "containers": [{
                "name": "c", "image": "busybox",
                "envFrom": [{ "configMapRef": { "name": config_map } }],
            }],
        },
    })
    .to_string()
}

fn node_object(name: &str) -> String {
    json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": name } }).to_string()
}

fn lease(name: &str) -> String {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": name, "namespace": "kube-node-lease" },
        "spec": { "holderIdentity": name, "leaseDurationSeconds": 40 },
    })
    .to_string()
}

#[test]
fn hosts_join_and_reach_only_their_own_pods() {
    let mut server = TestServer::start(Backend::Sqlite);
    let token_file = server.data_dir().join("agent-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        regex_like_token(&token),
        "the agent token has upstream's shape: {token}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored = server.json(&[
        "get",
        "secret",
        &format!("bootstrap-token-{}", &token[..6]),
        "-n",
        "kube-system",
    ]);
    assert_eq!(stored["type"], "bootstrap.kubernetes.io/token");

    let host1 = Host::join(&server, &token, "host-1");
    let host2 = Host::join(&server, &token, "host-2");
    let whoami = host1.ok(
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
        None,
    );
    assert!(
        whoami.starts_with("system:node:host-1") && whoami.contains("system:nodes"),
        "{whoami}"
    );

    // Its own Node and Lease only.
    host1.ok(&["create", "-f", "-"], Some(&node_object("host-1")));
    host1.forbidden(&["create", "-f", "-"], Some(&node_object("host-9")));
    host1.ok(&["label", "node", "host-1", "visor.io/ready=true"], None);
    host2.ok(&["create", "-f", "-"], Some(&node_object("host-2")));
    host1.forbidden(&["label", "node", "host-2", "stolen=true"], None);
    host1.forbidden(&["delete", "node", "host-1"], None);
    host1.ok(&["create", "-f", "-"], Some(&lease("host-1")));
    host1.forbidden(&["create", "-f", "-"], Some(&lease("host-2")));

    // Pods bound to each host, and what they use.
    server.ok(&["create", "namespace", "team-a"]);
    for (kind, name) in [("secret", "s1"), ("secret", "s2")] {
        server.ok(&[
            "create",
            kind,
            "generic",
            name,
            "--from-literal=k=v",
            "-n",
            "team-a",
        ]);
    }
    for name in ["c1", "c2"] {
        server.ok(&[
            "create",
            "configmap",
            name,
            "--from-literal=k=v",
            "-n",
            "team-a",
        ]);
    }
    server.ok(&[
        "create",
        "secret",
        "generic",
        "unused",
        "--from-literal=k=v",
        "-n",
        "team-a",
    ]);
    server.ok_stdin(&["create", "-f", "-"], &pod("p1", "host-1", "s1", "c1"));
    server.ok_stdin(&["create", "-f", "-"], &pod("p2", "host-2", "s2", "c2"));

    eventually("host-1 reads the secret its pod uses", || {
        host1
            .kubectl(&["get", "secret", "s1", "-n", "team-a"], None)
            .status
            .success()
    });
    host1.ok(&["get", "configmap", "c1", "-n", "team-a"], None);
    host1.ok(&["get", "pods", "-A"], None);
    // Another host's pod secrets, unused secrets, lists of secrets: refused.
    let err = host1.forbidden(&["get", "secret", "s2", "-n", "team-a"], None);
    assert!(
        err.contains(r#"User "system:node:host-1" cannot get resource "secrets""#),
        "{err}"
    );
    host1.forbidden(&["get", "configmap", "c2", "-n", "team-a"], None);
    host1.forbidden(&["get", "secret", "unused", "-n", "team-a"], None);
    host1.forbidden(&["get", "secrets", "-n", "team-a"], None);
    host2.ok(&["get", "secret", "s2", "-n", "team-a"], None);
    host2.forbidden(&["get", "secret", "s1", "-n", "team-a"], None);
    // Pod status: only of its own pods.
    let status = r#"{"status":{"phase":"Running"}}"#;
    host1.ok(
        &[
            "patch",
            "pod",
            "p1",
            "-n",
            "team-a",
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ],
        None,
    );
    host1.forbidden(
        &[
            "patch",
            "pod",
            "p2",
            "-n",
            "team-a",
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ],
        None,
    );
    host1.forbidden(&["delete", "pod", "p2", "-n", "team-a"], None);
    host1.forbidden(&["create", "namespace", "mine"], None);
    // Service-account tokens only for its own pods' service accounts, bound to them.
    eventually("team-a has its default service account", || {
        server
            .kubectl(&["get", "serviceaccount", "default", "-n", "team-a"])
            .status
            .success()
    });
    host1.ok(
        &[
            "create",
            "token",
            "default",
            "-n",
            "team-a",
            "--bound-object-kind=Pod",
            "--bound-object-name=p1",
        ],
        None,
    );
    host1.forbidden(
        &[
            "create",
            "token",
            "default",
            "-n",
            "team-a",
            "--bound-object-kind=Pod",
            "--bound-object-name=p2",
        ],
        None,
    );
    host1.forbidden(&["create", "token", "default", "-n", "team-a"], None);

    // Bad tokens are one 401, whatever is wrong with them.
    let (_, client_csr) = csr(&[]);
    let (_, serving_csr) = csr(&["127.0.0.1"]);
    let body = json!({ "nodeName": "host-3", "clientCsr": client_csr, "servingCsr": serving_csr });
    let expired = "aaaaaa.bbbbbbbbbbbbbbbb";
    server.ok_stdin(
        &["create", "-f", "-"],
        &json!({
            "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": { "name": "bootstrap-token-aaaaaa", "namespace": "kube-system" },
            "stringData": {
                "token-id": "aaaaaa", "token-secret": "bbbbbbbbbbbbbbbb",
                "usage-bootstrap-authentication": "true", "expiration": "2020-01-01T00:00:00Z",
            },
        })
        .to_string(),
    );
    let wrong_secret = format!("{}.0000000000000000", &token[..6]);
    let mut messages = Vec::new();
    for bad in [
        "",
        "not-a-token",
        "zzzzzz.zzzzzzzzzzzzzzzz",
        wrong_secret.as_str(),
        expired,
    ] {
        let (code, status) = join(&server, bad, &body);
        assert_eq!(code, 401, "token {bad:?}: {status}");
        messages.push(status["message"].clone());
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "one message for every bad token: {messages:?}"
    );
    // A bad node name is 422 on nodeName; a broken CSR 400.
    let bad_name =
        json!({ "nodeName": "Host_3", "clientCsr": client_csr, "servingCsr": serving_csr });
    let (code, status) = join(&server, &token, &bad_name);
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"], "nodeName",
        "{status}"
    );
    let broken = json!({ "nodeName": "host-3", "clientCsr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "servingCsr": serving_csr });
    let (code, status) = join(&server, &token, &broken);
    assert_eq!(code, 400, "{status}");

    // `visor token create|list|delete`.
    let admin = server.kubeconfig();
    let visor = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_visor"))
            .args(args)
            .arg("--kubeconfig")
            .arg(&admin)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "visor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let created = visor(&["token", "create", "--ttl", "1h", "--description", "rack 4"]);
    assert!(regex_like_token(&created), "{created}");
    let listed = visor(&["token", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&created[..6]) && l.contains("rack 4")),
        "{listed}"
    );
    assert!(
        !listed.contains(&created[7..]),
        "token list shows no secrets"
    );
    eventually("a new join token works", || {
        join(&server, &created, &body).0 == 200
    });
    visor(&["token", "delete", &created[..6]]);
    eventually("a deleted join token stops working", || {
        join(&server, &created, &body).0 == 401
    });

    // A restart keeps the agent's token.
    server.restart();
    let after = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(after, token);
    assert_eq!(join(&server, &token, &body).0, 200);
    let log = server.stderr();
    assert!(
        !log.contains(&token[7..]),
        "the join token's secret is not logged"
    );
}

/// `[a-z0-9]{6}.[a-z0-9]{16}`.
fn regex_like_token(text: &str) -> bool {
    visor_apiserver::auth::bootstrap::JoinToken::parse(text).is_some_and(|t| t.reveal() == text)
}
