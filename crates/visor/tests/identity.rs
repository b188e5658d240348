//! Users, login and tokens end to end: an admin creates users with `visor user`, grants them
//! namespace permissions, they log in with `kubectl visor login` (the real kubectl running the
//! plugin), and the real kubectl is allowed or refused with their tokens as upstream would.
//! Tokens that are expired, tampered with, for another audience or for a deleted user are
//! 401; service-account tokens come from `kubectl create token`; the audit log records who did
//! what, and no password or token appears in any log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestServer};
use serde_json::Value;
use tempfile::TempDir;
use visor_apiserver::auth::keys::{Claims, KeySet, VisorClaim};
use visor_apiserver::auth::permissions::{NamespacePermission, SubjectKind, role_binding};

const ALICE_PASSWORD: &str = "alice-Pa55word-7391";
const BOB_PASSWORD: &str = "bob-Pa55word-5512";
const BOB_NEW_PASSWORD: &str = "bob-N3w-Pa55word-8813";
const WRONG_PASSWORD: &str = "not-the-password-0042";

fn visor(args: &[&str], password: Option<&str>, path_prefix: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_visor"));
    command
        .args(args)
        .stdin(Stdio::null())
        .env_remove("KUBECONFIG");
    match password {
        Some(p) => command.env("VISOR_PASSWORD", p),
        None => command.env_remove("VISOR_PASSWORD"),
    };
    if let Some(dir) = path_prefix {
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{path}", dir.display()));
    }
    command.output().expect("running visor")
}

fn succeeded(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Someone using a kubeconfig written by `kubectl visor login`.
struct Person {
    kubeconfig: PathBuf,
    cache: TempDir,
}

impl Person {
    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .arg("--request-timeout=30s")
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl")
    }

    fn ok(&self, args: &[&str]) -> String {
        succeeded(&format!("kubectl {args:?}"), &self.kubectl(args))
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn contexts(&self) -> Vec<String> {
        let out = self.ok(&["config", "get-contexts", "-o", "name"]);
        let mut names: Vec<String> = out.lines().map(str::to_string).collect();
        names.sort();
        names
    }

    fn token(&self) -> String {
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let config: Value = serde_saphyr::from_str(&text).unwrap();
        config["users"][0]["user"]["token"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Runs `kubectl` with a bare bearer token (no kubeconfig credentials).
fn kubectl_with_token(server: &TestServer, token: &str, args: &[&str]) -> Output {
    let ca = server.data_dir().join("pki/ca.crt");
    Command::new("kubectl")
        .arg("--kubeconfig=/dev/null")
        .arg(format!("--server=https://127.0.0.1:{}", server.port))
        .arg(format!("--certificate-authority={}", ca.display()))
        .arg(format!("--token={token}"))
        .arg("--request-timeout=30s")
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl")
}

fn unauthorized(server: &TestServer, token: &str, what: &str) {
    let out = kubectl_with_token(server, token, &["get", "pods", "-n", "team-a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Unauthorized"),
        "{what}: expected 401, got: {err}{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Retries `check` for up to 10 s: grants reach the authorizer through the watch cache.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not true after 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn grant(server: &TestServer, namespace: &str, permission: &str, user: &str) {
    let permission = NamespacePermission::parse(permission).unwrap();
    let binding = role_binding(namespace, permission, SubjectKind::User, user);
    server.ok_stdin(&["apply", "-f", "-"], &binding.to_string());
}

const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},
  "spec":{"containers":[{"name":"web","image":"nginx"}]}}"#;

#[test]
fn users_log_in_and_get_exactly_their_grants() {
    let server = TestServer::start(Backend::Sqlite);
    let admin = server.kubeconfig();
    let admin = admin.to_str().unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    let ca = server.data_dir().join("pki/ca.crt");
    let ca = ca.to_str().unwrap();
    for ns in ["team-a", "team-b"] {
        server.ok(&["create", "namespace", ns]);
    }

    // The admin creates two users (passwords from VISOR_PASSWORD) and grants them.
    succeeded(
        "user add alice",
        &visor(
            &[
                "user",
                "add",
                "alice",
                "--group",
                "developers",
                "--kubeconfig",
                admin,
            ],
            Some(ALICE_PASSWORD),
            None,
        ),
    );
    succeeded(
        "user add bob",
        &visor(
            &["user", "add", "bob", "--kubeconfig", admin],
            Some(BOB_PASSWORD),
            None,
        ),
    );
    let again = visor(
        &["user", "add", "bob", "--kubeconfig", admin],
        Some(BOB_PASSWORD),
        None,
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let users = succeeded(
        "user list",
        &visor(&["user", "list", "--kubeconfig", admin], None, None),
    );
    assert!(
        users
            .lines()
            .any(|l| l.starts_with("alice") && l.contains("developers")),
        "{users}"
    );
    assert!(users.lines().any(|l| l.starts_with("bob")), "{users}");
    // Only hashes are stored.
    let stored = server.json(&["get", "secret", "visor-user-alice", "-n", "kube-system"]);
    let hash = visor_apiserver::auth::users::secret_field(&stored, "password-hash").unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    grant(&server, "team-a", "edit", "alice");
    grant(&server, "team-b", "view", "bob");

    // `kubectl visor login`: the plugin is this program under another name.
    let plugins = tempfile::tempdir().unwrap();
    succeeded(
        "install-plugin",
        &visor(
            &["install-plugin", "--dir", plugins.path().to_str().unwrap()],
            None,
            None,
        ),
    );
    let home = tempfile::tempdir().unwrap();
    let login = |user: &str, password: &str| -> (Person, Output) {
        let kubeconfig = home.path().join(format!("{user}.kubeconfig"));
        let mut command = Command::new("kubectl");
        let path = std::env::var("PATH").unwrap_or_default();
        command
            .args(["visor", "login", "--server", &url, "--username", user])
            .args(["--certificate-authority", ca])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("PATH", format!("{}:{path}", plugins.path().display()))
            .env("VISOR_PASSWORD", password)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        let out = command.output().expect("running kubectl visor");
        (
            Person {
                kubeconfig,
                cache: tempfile::tempdir().unwrap(),
            },
            out,
        )
    };
    eventually("alice's grant is in force", || {
        let (alice, out) = login("alice", ALICE_PASSWORD);
        out.status.success() && alice.contexts().contains(&"team-a".to_string())
    });
    let (alice, out) = login("alice", ALICE_PASSWORD);
    let printed = succeeded("kubectl visor login alice", &out);
    assert!(printed.contains("Logged in"), "{printed}");
    let server_context = format!("127.0.0.1-{}", server.port);
    assert_eq!(
        alice.contexts(),
        [server_context.clone(), "team-a".to_string()]
    );

    // Alice works in team-a, is refused in team-b and on quotas.
    let apply = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&alice.kubeconfig)
        .args(["--context", "team-a", "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(POD.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    succeeded("alice applies a pod in team-a", &apply);
    assert!(
        alice
            .ok(&["--context", "team-a", "get", "pods"])
            .contains("web")
    );
    assert_eq!(
        alice.ok(&[
            "--context",
            "team-a",
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}"
        ]),
        "alice"
    );
    let err = alice.fails(&["--context", "team-a", "get", "pods", "-n", "team-b"]);
    assert!(
        err.contains(r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "team-b""#),
        "{err}"
    );
    let err = alice.fails(&[
        "--context",
        "team-a",
        "create",
        "quota",
        "q",
        "--hard=pods=1",
    ]);
    assert!(err.contains("forbidden"), "{err}");
    let list = alice.ok(&["--context", "team-a", "auth", "can-i", "--list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("create") && l.contains("delete")),
        "{list}"
    );
    let list_b = alice.ok(&[
        "--context",
        "team-a",
        "auth",
        "can-i",
        "--list",
        "-n",
        "team-b",
    ]);
    assert!(!list_b.lines().any(|l| l.starts_with("pods ")), "{list_b}");

    // Bob reads team-b and may not write.
    let (bob, out) = login("bob", BOB_PASSWORD);
    succeeded("kubectl visor login bob", &out);
    assert_eq!(
        bob.contexts(),
        [server_context.clone(), "team-b".to_string()]
    );
    bob.ok(&["--context", "team-b", "get", "pods"]);
    let err = bob.fails(&[
        "--context",
        "team-b",
        "create",
        "configmap",
        "c",
        "--from-literal=a=b",
    ]);
    assert!(
        err.contains(r#"User "bob" cannot create resource "configmaps""#),
        "{err}"
    );
    let list = bob.ok(&["--context", "team-b", "auth", "can-i", "--list"]);
    let pods = list
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_default();
    assert!(pods.contains("get") && !pods.contains("create"), "{list}");

    // A new grant shows up at the next login; logout removes the contexts.
    grant(&server, "team-a", "view", "bob");
    eventually("bob's second grant reaches login", || {
        let (bob, out) = login("bob", BOB_PASSWORD);
        out.status.success() && bob.contexts().contains(&"team-a".to_string())
    });
    let logout = visor(
        &["logout", "--kubeconfig", bob.kubeconfig.to_str().unwrap()],
        None,
        None,
    );
    succeeded("logout", &logout);
    assert!(bob.contexts().is_empty());

    // A new password replaces the old one.
    succeeded(
        "user passwd",
        &visor(
            &["user", "passwd", "bob", "--kubeconfig", admin],
            Some(BOB_NEW_PASSWORD),
            None,
        ),
    );
    eventually("bob's new password is in force", || {
        login("bob", BOB_NEW_PASSWORD).1.status.success()
    });
    assert!(!login("bob", BOB_PASSWORD).1.status.success());

    // Wrong password and unknown user: the same refusal.
    let (_, wrong) = login("alice", WRONG_PASSWORD);
    let (_, unknown) = login("mallory", WRONG_PASSWORD);
    for out in [&wrong, &unknown] {
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("wrong user name or password"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Repeated failures are slowed down.
    for _ in 0..4 {
        login("bob", WRONG_PASSWORD);
    }
    let started = Instant::now();
    let (_, out) = login("bob", WRONG_PASSWORD);
    assert!(!out.status.success());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the sixth failure in a row took only {:?}",
        started.elapsed()
    );

    // Tokens: the real one works; expired, tampered, wrong-audience or forged ones are 401.
    let token = alice.token();
    let out = kubectl_with_token(&server, &token, &["get", "pods", "-n", "team-a"]);
    succeeded("a login token on its own", &out);
    let keys = KeySet::load(server.data_dir()).unwrap();
    let uid = server.ok(&[
        "get",
        "secret",
        "visor-user-alice",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        iss: visor_apiserver::auth::ISSUER.into(),
        sub: "alice".into(),
        aud: vec![visor_apiserver::auth::API_AUDIENCE.into()],
        exp: now + 600,
        nbf: now - 10,
        iat: now - 10,
        jti: "test".into(),
        kubernetes: None,
        visor: Some(VisorClaim {
            provider: "visor".into(),
            uid: uid.clone(),
        }),
    };
    let good = keys.sign(&claims).unwrap();
    succeeded(
        "a well-formed token",
        &kubectl_with_token(&server, &good, &["get", "pods", "-n", "team-a"]),
    );
    let expired = keys
        .sign(&Claims {
            exp: now - 3600,
            nbf: now - 7200,
            iat: now - 7200,
            ..claims.clone()
        })
        .unwrap();
    unauthorized(&server, &expired, "expired token");
    let other_audience = keys
        .sign(&Claims {
            aud: vec!["https://somewhere-else.example".into()],
            ..claims.clone()
        })
        .unwrap();
    unauthorized(&server, &other_audience, "wrong audience");
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_claims = Claims {
        sub: "bob".into(),
        ..claims.clone()
    };
    use base64::Engine as _;
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&forged_claims).unwrap());
    parts[1] = &forged_payload;
    unauthorized(&server, &parts.join("."), "tampered payload");
    let other_keys = tempfile::tempdir().unwrap();
    let stranger = KeySet::load_or_create(other_keys.path()).unwrap();
    unauthorized(
        &server,
        &stranger.sign(&claims).unwrap(),
        "unknown signing key",
    );
    unauthorized(&server, "not-a-token", "garbage");

    // Service-account tokens from `kubectl create token`.
    eventually("team-a has its default service account", || {
        server
            .kubectl(&["get", "serviceaccount", "default", "-n", "team-a"])
            .status
            .success()
    });
    let sa_token = server.ok(&["create", "token", "default", "-n", "team-a"]);
    let sa_token = sa_token.trim();
    let whoami = kubectl_with_token(
        &server,
        sa_token,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    let whoami = succeeded("whoami with a service-account token", &whoami);
    assert!(
        whoami.starts_with("system:serviceaccount:team-a:default")
            && whoami.contains("system:serviceaccounts:team-a"),
        "{whoami}"
    );
    // Bound to a pod: valid while the pod exists.
    let bound = server.ok(&[
        "create",
        "token",
        "default",
        "-n",
        "team-a",
        "--bound-object-kind=Pod",
        "--bound-object-name=web",
    ]);
    let bound = bound.trim().to_string();
    succeeded(
        "a pod-bound token",
        &kubectl_with_token(&server, &bound, &["auth", "whoami"]),
    );
    let wrong_aud = server.ok(&[
        "create",
        "token",
        "default",
        "-n",
        "team-a",
        "--audience=vault",
    ]);
    unauthorized(
        &server,
        wrong_aud.trim(),
        "service-account token for another audience",
    );
    server.ok(&[
        "delete",
        "pod",
        "web",
        "-n",
        "team-a",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    eventually("the bound token dies with its pod", || {
        let out = kubectl_with_token(&server, &bound, &["auth", "whoami"]);
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized")
    });
    // Deleting a user revokes their tokens.
    succeeded(
        "user delete",
        &visor(
            &["user", "delete", "alice", "--kubeconfig", admin],
            None,
            None,
        ),
    );
    eventually("alice's token dies with her", || {
        let out = kubectl_with_token(&server, &token, &["get", "pods", "-n", "team-a"]);
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized")
    });
    let groups = succeeded(
        "group list",
        &visor(&["group", "list", "--kubeconfig", admin], None, None),
    );
    assert!(
        groups
            .lines()
            .any(|l| l.starts_with("developers") && !l.contains("alice")),
        "{groups}"
    );

    // The audit log: who did what, with which outcome.
    let mut server = server;
    server.restart();
    let audit = std::fs::read_to_string(server.data_dir().join("audit/audit.log")).unwrap();
    let events: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |user: &str, verb: &str, resource: &str, namespace: &str, code: u64| {
        events.iter().any(|e| {
            e["user"]["username"] == user
                && e["verb"] == verb
                && e["objectRef"]["resource"] == resource
                && e["objectRef"]["namespace"] == namespace
                && e["responseStatus"]["code"] == code
        })
    };
    assert!(
        find("alice", "create", "pods", "team-a", 201),
        "alice's pod create is audited"
    );
    assert!(
        find("alice", "list", "pods", "team-b", 403),
        "alice's refusal is audited"
    );
    assert!(
        find("bob", "create", "configmaps", "team-b", 403),
        "bob's refusal is audited"
    );
    assert!(
        find("bob", "list", "pods", "team-b", 200),
        "bob's read is audited"
    );
    assert!(
        events
            .iter()
            .any(|e| e["requestURI"] == "/login" && e["responseStatus"]["code"] == 401),
        "failed logins are audited"
    );
    assert!(
        events
            .iter()
            .any(|e| e["user"]["username"] == "system:serviceaccount:team-a:default"),
        "service-account requests are audited"
    );
    assert!(events.iter().all(|e| !e["sourceIPs"][0].is_null()));

    // No password or token in any log the server wrote.
    let mut logs = audit.clone();
    for name in std::fs::read_dir(server.data_dir()).unwrap() {
        let path = name.unwrap().path();
        if path
            .extension()
            .is_some_and(|e| e == "stderr" || e == "stdout")
        {
            logs.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
    for secret in [
        ALICE_PASSWORD,
        BOB_PASSWORD,
        BOB_NEW_PASSWORD,
        WRONG_PASSWORD,
        token.as_str(),
        sa_token,
        bound.as_str(),
        good.as_str(),
    ] {
        assert!(
            !logs.contains(secret),
            "a secret ({}…) is in a log",
            &secret[..6]
        );
    }
    let agent_token = std::fs::read_to_string(server.data_dir().join("agent-token")).unwrap();
    assert!(
        !logs.contains(agent_token.trim()),
        "the join token is in a log"
    );
}
