//! The audit log end to end: every request the real kubectl makes is one JSON line in
//! `DATA_DIR/audit/audit.log` with who, what and the outcome — including the last requests
//! answered before a clean shutdown — and health probes are left out.

mod common;

use common::{Backend, TestServer};
use serde_json::Value;

fn events(server: &TestServer) -> Vec<Value> {
    let text = std::fs::read_to_string(server.data_dir().join("audit/audit.log")).unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn every_answered_request_is_audited_up_to_shutdown() {
    let mut server = TestServer::start(Backend::Sqlite);
    server.ok(&["create", "namespace", "audited"]);
    for i in 0..20 {
        server.ok(&["create", "configmap", &format!("c{i}"), "-n", "audited"]);
    }
    server.fails(&["get", "configmap", "missing", "-n", "audited"]);
    // The last request, then stop at once: its event must still reach the file.
    server.ok(&["delete", "configmap", "c19", "-n", "audited"]);
    let status = server.terminate();
    assert!(status.success(), "server exited with {status}");

    let events = events(&server);
    let creates = events
        .iter()
        .filter(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "configmaps")
        .count();
    assert_eq!(creates, 20, "one event per create");
    let missing = events
        .iter()
        .find(|e| e["objectRef"]["name"] == "missing")
        .expect("the failed get is audited");
    assert_eq!(missing["verb"], "get");
    assert_eq!(missing["responseStatus"]["code"], 404);
    assert_eq!(missing["user"]["username"], "admin");
    assert!(
        missing["user"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "system:masters")
    );
    assert_eq!(missing["sourceIPs"][0], "127.0.0.1");
    assert_eq!(missing["apiVersion"], "audit.k8s.io/v1");
    // kubectl deletes, then reads until the object is gone: that read is the last request.
    let delete = events
        .iter()
        .find(|e| e["verb"] == "delete")
        .expect("the delete is audited");
    assert_eq!(delete["objectRef"]["name"], "c19");
    assert_eq!(delete["responseStatus"]["code"], 200);
    let last = events.last().unwrap();
    assert_eq!(
        last["objectRef"]["name"], "c19",
        "the last request before shutdown: {last}"
    );
    assert_eq!(last["responseStatus"]["code"], 404, "{last}");
    assert!(
        !events.iter().any(|e| e["requestURI"]
            .as_str()
            .is_some_and(|u| u.starts_with("/readyz") || u.starts_with("/healthz"))),
        "health probes are not audited"
    );
    // The in-process controllers and scheduler are audited as themselves, like any client.
    for user in ["system:visor-controller-manager", "system:visor-scheduler"] {
        let watch = events
            .iter()
            .find(|e| e["verb"] == "watch" && e["user"]["username"] == user)
            .unwrap_or_else(|| panic!("a watch by {user} is audited"));
        assert_eq!(watch["sourceIPs"][0], "127.0.0.1", "{watch}");
        assert!(
            watch["userAgent"]
                .as_str()
                .is_some_and(|agent| agent.starts_with("visor/")),
            "{watch}"
        );
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.data_dir().join("audit/audit.log"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the audit log is private");
}
