//! `visor bench api` runs end to end against a real server and reports every metric, in both
//! output formats, cleaning up after itself.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{Backend, TestServer};

fn bench(server: &TestServer, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_visor"))
        .args(["bench", "api", "--kubeconfig"])
        .arg(server.kubeconfig())
        .args(["--objects", "60", "--lists", "3", "--watch-events", "10"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn bench_api_reports_json_metrics_and_cleans_up() {
    let server = TestServer::start(Backend::Sqlite);
    let out = bench(
        &server,
        &[
            "--json",
            "--connections",
            "3",
            "--hold",
            "40",
            "--quota-overhead",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut metrics = BTreeMap::new();
    for line in stdout.lines() {
        let metric: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(metric["bench"], "api", "{line}");
        let value = metric["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("no value: {line}"));
        metrics.insert(
            metric["metric"].as_str().unwrap().to_string(),
            (value, metric["unit"].as_str().unwrap().to_string()),
        );
    }
    for op in [
        "create",
        "get",
        "update",
        "delete",
        "hold_create",
        "create_unquoted",
        "create_quoted",
    ] {
        for (suffix, unit) in [("throughput", "ops/s"), ("p50", "ms"), ("p99", "ms")] {
            let key = format!("{op}_{suffix}");
            let (value, got_unit) = metrics
                .get(&key)
                .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"));
            assert!(*value > 0.0, "{key} = {value}");
            assert_eq!(got_unit, unit);
        }
    }
    for key in [
        "list_p50",
        "list_p99",
        "list_rv0_p50",
        "watch_delivery_p50",
        "watch_delivery_p99",
    ] {
        assert!(
            metrics.get(key).is_some_and(|(v, u)| *v > 0.0 && u == "ms"),
            "{key} in:\n{stdout}"
        );
    }
    // The server runs on this machine, so its memory is reported.
    for key in ["server_rss_idle", "server_rss_loaded", "server_rss_hold"] {
        assert!(
            metrics
                .get(key)
                .is_some_and(|(v, u)| *v > 1.0 && u == "MiB"),
            "{key} in:\n{stdout}"
        );
    }
    assert_eq!(metrics.get("hold_objects").map(|(v, _)| *v), Some(40.0));
    // A ratio: its sign and size depend on the machine, its presence and unit do not.
    assert!(
        metrics
            .get("quota_overhead")
            .is_some_and(|(v, u)| v.is_finite() && *v < 100.0 && u == "%"),
        "quota_overhead in:\n{stdout}"
    );
    // CPU time comes in clock ticks, so a short run may see none on one side.
    for key in ["cpu_per_create_unquoted", "cpu_per_create_quoted"] {
        assert!(
            metrics
                .get(key)
                .is_some_and(|(v, u)| v.is_finite() && *v >= 0.0 && u == "µs"),
            "{key} in:\n{stdout}"
        );
    }

    let namespaces = server.ok(&["get", "namespaces", "-o", "name"]);
    assert!(
        !namespaces.contains("namespace/bench-"),
        "the bench namespace was left behind:\n{namespaces}"
    );
}

#[test]
fn bench_api_prints_a_table() {
    let server = TestServer::start(Backend::Sqlite);
    let out = bench(&server, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("operation"))
        .unwrap_or_else(|| panic!("no table:\n{stdout}"));
    for column in ["count", "throughput/s", "p50 ms", "p99 ms"] {
        assert!(header.contains(column), "{header}");
    }
    for row in [
        "create ",
        "get ",
        "list (60 items) ",
        "list (60 items), rv=0",
        "update ",
        "watch delivery ",
        "delete ",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "no {row:?} row in:\n{stdout}"
        );
    }
    assert!(stdout.contains("server RSS"), "{stdout}");
}

#[test]
fn bench_declarative_reports_apply_and_foreground_deletion() {
    let server = TestServer::start(Backend::Sqlite);
    let out = Command::new(env!("CARGO_BIN_EXE_visor"))
        .args(["bench", "declarative", "--kubeconfig"])
        .arg(server.kubeconfig())
        .args(["--objects", "30", "--pods", "40", "--json"])
        .output()
        .unwrap();
    common::bench_metrics(
        &out,
        "declarative",
        &[
            "apply_create_throughput",
            "apply_create_p99",
            "apply_change_throughput",
            "apply_change_p99",
            "foreground_delete_seconds",
        ],
    );
    // The objects it applied went with its namespace.
    let left = server.ok(&[
        "get",
        "configmaps",
        "-A",
        "-l",
        "bench=declarative",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "{left}");
}
