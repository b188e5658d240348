//! The workload controllers end to end: Deployments, ReplicaSets, Jobs, CronJobs,
//! StatefulSets, DaemonSets and default ServiceAccounts, driven and observed with the real
//! `kubectl` against a real `visor server`.
//!
//! No node agent runs pods yet, so the tests play its part: they move pods along by patching
//! pod status through the status subresource (Running and Ready, or Succeeded, or Failed).
//! The controllers reach the server only through the API, the same on either store, so these
//! run on SQLite only.

mod common;

use std::time::Duration;

use common::{Backend, TestServer, eventually, table};
use serde_json::{Value, json};

/// How long any one expected change may take.
const SETTLE: Duration = Duration::from_secs(20);

fn namespace(server: &TestServer, name: &str) -> String {
    server.ok(&["create", "namespace", name]);
    name.to_string()
}

/// The pods in `ns` matching `selector`, as JSON objects.
fn pods(server: &TestServer, ns: &str, selector: &str) -> Vec<Value> {
    let list = server.json(&["get", "pods", "-n", ns, "-l", selector]);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn name(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn active(pods: &[Value]) -> Vec<Value> {
    pods.iter()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null()
                && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        })
        .cloned()
        .collect()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Plays the node agent: sets a pod's status through the status subresource.
fn set_pod_status(server: &TestServer, ns: &str, pod: &str, status: Value) {
    let patch = json!({ "status": status }).to_string();
    server.ok(&[
        "patch",
        "pod",
        pod,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

fn mark_ready(server: &TestServer, ns: &str, pod: &str) {
    set_pod_status(
        server,
        ns,
        pod,
        json!({ "phase": "Running", "conditions": [{ "type": "Ready", "status": "True" }] }),
    );
}

/// Marks every active, not yet ready pod matching `selector` ready; returns how many it marked.
fn mark_all_ready(server: &TestServer, ns: &str, selector: &str) -> usize {
    let pending: Vec<Value> = active(&pods(server, ns, selector))
        .into_iter()
        .filter(|p| !is_ready(p))
        .collect();
    for pod in &pending {
        mark_ready(server, ns, &name(pod));
    }
    pending.len()
}

fn events(server: &TestServer, ns: &str) -> String {
    server.ok(&["get", "events", "-n", ns])
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.0
"#;

fn deployment_status(server: &TestServer, ns: &str) -> Value {
    server.json(&["get", "deploy", "web", "-n", ns])
}

/// Marks pods ready until the Deployment reports `replicas` updated, available pods and no
/// others, checking on the way that it never runs more than `max_total` pods.
fn drive_rollout(server: &TestServer, ns: &str, replicas: i64, max_total: usize) {
    eventually("the rollout to finish", SETTLE, || {
        let live = active(&pods(server, ns, "app=web"));
        assert!(
            live.len() <= max_total,
            "{} pods exceed replicas + maxSurge = {max_total}",
            live.len()
        );
        mark_all_ready(server, ns, "app=web");
        let d = deployment_status(server, ns);
        let s = &d["status"];
        let done = s["updatedReplicas"] == replicas
            && s["replicas"] == replicas
            && s["availableReplicas"] == replicas
            && s["observedGeneration"] == d["metadata"]["generation"];
        done.then_some(())
    });
}

fn replicasets(server: &TestServer, ns: &str) -> Vec<Value> {
    let list = server.json(&["get", "rs", "-n", ns, "-l", "app=web"]);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn revision(rs: &Value) -> String {
    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn image(object: &Value) -> String {
    object["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn deployment_rolls_out_updates_rolls_back_and_scales() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "rollout");
    server.ok_stdin(&["apply", "-n", &ns, "-f", "-"], DEPLOYMENT);

    // One ReplicaSet, named after the Deployment and its template hash, with three pods.
    let rs = eventually("a replicaset with 3 pods", SETTLE, || {
        let sets = replicasets(&server, &ns);
        let pods = active(&pods(&server, &ns, "app=web"));
        (sets.len() == 1 && pods.len() == 3).then(|| sets[0].clone())
    });
    let rs_name = name(&rs);
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .expect("pod-template-hash label")
        .to_string();
    assert_eq!(rs_name, format!("web-{hash}"));
    assert_eq!(revision(&rs), "1");
    let pod_list = pods(&server, &ns, "app=web");
    for pod in &pod_list {
        let pod_name = name(pod);
        assert!(pod_name.starts_with(&format!("{rs_name}-")), "{pod_name}");
        assert_eq!(pod_name.len(), rs_name.len() + 6, "{pod_name}");
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet");
        assert_eq!(owner["name"], rs_name.as_str());
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
        assert_eq!(
            pod["metadata"]["labels"]["pod-template-hash"],
            hash.as_str()
        );
    }
    let out = server.ok(&["get", "pods", "-n", &ns]);
    assert_eq!(table(&out).len(), 4, "{out}");
    // One event per pod created, each naming its pod, as `kubectl describe rs` shows them.
    let created: Vec<String> = eventually("3 SuccessfulCreate events", SETTLE, || {
        let list = server.json(&["get", "events", "-n", &ns]);
        let notes: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                e["reason"] == "SuccessfulCreate" && e["involvedObject"]["name"] == rs_name.as_str()
            })
            .filter_map(|e| e["message"].as_str().map(String::from))
            .collect();
        (notes.len() == 3).then_some(notes)
    });
    for pod in &pod_list {
        assert!(
            created.contains(&format!("Created pod: {}", name(pod))),
            "{created:?}"
        );
    }
    let described = server.ok(&["describe", "rs", &rs_name, "-n", &ns]);
    assert!(
        described.contains("visor-controller-manager"),
        "{described}"
    );

    // Not ready yet: rollout status would wait. Make them ready and it succeeds.
    let d = deployment_status(&server, &ns);
    assert_eq!(d["status"]["unavailableReplicas"], 3, "{d}");
    drive_rollout(&server, &ns, 3, 4);
    let out = server.ok(&[
        "rollout",
        "status",
        "deploy/web",
        "-n",
        &ns,
        "--timeout=20s",
    ]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let d = deployment_status(&server, &ns);
    let conditions = d["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .clone();
    let reason = |t: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == t)
            .map(|c| (c["status"].clone(), c["reason"].clone()))
    };
    assert_eq!(
        reason("Available"),
        Some((json!("True"), json!("MinimumReplicasAvailable")))
    );
    assert_eq!(
        reason("Progressing"),
        Some((json!("True"), json!("NewReplicaSetAvailable")))
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    let out = server.ok(&["get", "deploy", "web", "-n", &ns]);
    assert_eq!(table(&out)[1][1..4], ["3/3", "3", "3"], "{out}");

    // A new image: a second ReplicaSet takes over within maxSurge (1) and maxUnavailable (0).
    // (`kubectl set image` needs strategic merge patch, which the server does not serve yet.)
    let patch =
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:2.0"}]}}}}"#;
    server.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        patch,
    ]);
    drive_rollout(&server, &ns, 3, 4);
    let sets = replicasets(&server, &ns);
    assert_eq!(sets.len(), 2, "{sets:?}");
    let old = sets
        .iter()
        .find(|s| name(s) == rs_name)
        .expect("old replicaset");
    let new = sets
        .iter()
        .find(|s| name(s) != rs_name)
        .expect("new replicaset");
    assert_eq!(old["spec"]["replicas"], 0);
    assert_eq!(new["spec"]["replicas"], 3);
    assert_eq!(revision(new), "2");
    assert_eq!(image(new), "nginx:2.0");
    let out = server.ok(&[
        "rollout",
        "status",
        "deploy/web",
        "-n",
        &ns,
        "--timeout=20s",
    ]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let history = server.ok(&["rollout", "history", "deploy/web", "-n", &ns]);
    let revisions: Vec<String> = table(&history)
        .into_iter()
        .filter_map(|row| row.first().cloned())
        .filter(|c| c.chars().all(|ch| ch.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let one = server.ok(&[
        "rollout",
        "history",
        "deploy/web",
        "-n",
        &ns,
        "--revision=1",
    ]);
    assert!(one.contains("nginx:1.0"), "{one}");

    // Undo: kubectl patches the template back from revision 1's ReplicaSet (a JSON patch); the
    // old ReplicaSet becomes the new one, as revision 3.
    let out = server.ok(&["rollout", "undo", "deploy/web", "-n", &ns]);
    assert!(out.contains("rolled back"), "{out}");
    drive_rollout(&server, &ns, 3, 4);
    let sets = replicasets(&server, &ns);
    let back = sets
        .iter()
        .find(|s| name(s) == rs_name)
        .expect("first replicaset");
    assert_eq!(back["spec"]["replicas"], 3, "{sets:?}");
    assert_eq!(revision(back), "3");
    assert_eq!(
        back["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"],
        "1"
    );
    assert_eq!(image(&deployment_status(&server, &ns)), "nginx:1.0");
    let history = server.ok(&["rollout", "history", "deploy/web", "-n", &ns]);
    let revisions: Vec<String> = table(&history)
        .into_iter()
        .filter_map(|row| row.first().cloned())
        .filter(|c| c.chars().all(|ch| ch.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    server.ok(&[
        "rollout",
        "status",
        "deploy/web",
        "-n",
        &ns,
        "--timeout=20s",
    ]);

    // Scale through the scale subresource.
    server.ok(&["scale", "deploy", "web", "-n", &ns, "--replicas=5"]);
    eventually("5 pods", SETTLE, || {
        (active(&pods(&server, &ns, &format!("pod-template-hash={hash}"))).len() == 5).then_some(())
    });
    drive_rollout(&server, &ns, 5, 7);
    let out = server.ok(&["get", "deploy", "web", "-n", &ns]);
    assert_eq!(table(&out)[1][1], "5/5", "{out}");

    let seen = events(&server, &ns);
    for reason in ["ScalingReplicaSet", "SuccessfulCreate", "SuccessfulDelete"] {
        assert!(seen.contains(reason), "no {reason} event:\n{seen}");
    }
    assert!(seen.contains("Scaled up replica set"), "{seen}");
}

#[test]
fn recreate_deployment_replaces_all_pods_at_once() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "recreate");
    let manifest = DEPLOYMENT.replace("replicas: 3", "replicas: 2\n  strategy: {type: Recreate}");
    server.ok_stdin(&["apply", "-n", &ns, "-f", "-"], &manifest);
    drive_rollout(&server, &ns, 2, 2);
    let patch =
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:2.0"}]}}}}"#;
    server.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        patch,
    ]);
    // Recreate never runs old and new pods together: the pod count never exceeds 2.
    drive_rollout(&server, &ns, 2, 2);
    let live = active(&pods(&server, &ns, "app=web"));
    assert!(
        live.iter()
            .all(|p| image(&json!({"spec": {"template": p}})) == "nginx:2.0")
    );
}

const JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: work
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: busybox
"#;

#[test]
fn job_runs_to_completion() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "jobs");
    server.ok_stdin(&["apply", "-n", &ns, "-f", "-"], JOB);
    // Two at a time (parallelism), labelled with the job's name.
    let first = eventually("2 active pods", SETTLE, || {
        let live = active(&pods(&server, &ns, "job-name=work"));
        (live.len() == 2).then_some(live)
    });
    for pod in &first {
        assert!(name(pod).starts_with("work-"), "{pod}");
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");
    }
    let job = server.json(&["get", "job", "work", "-n", &ns]);
    assert_eq!(job["status"]["active"], 2, "{job}");
    assert!(job["status"]["startTime"].is_string(), "{job}");

    // Two succeed; one more (not two: completions 3) starts; it succeeds; the Job is complete.
    for pod in &first {
        set_pod_status(&server, &ns, &name(pod), json!({ "phase": "Succeeded" }));
    }
    let third = eventually("the third pod", SETTLE, || {
        let live = active(&pods(&server, &ns, "job-name=work"));
        (live.len() == 1).then(|| live[0].clone())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(active(&pods(&server, &ns, "job-name=work")).len(), 1);
    set_pod_status(&server, &ns, &name(&third), json!({ "phase": "Succeeded" }));
    let out = server.ok(&[
        "wait",
        "--for=condition=complete",
        "job/work",
        "-n",
        &ns,
        "--timeout=20s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    let job = server.json(&["get", "job", "work", "-n", &ns]);
    assert_eq!(job["status"]["succeeded"], 3, "{job}");
    assert!(job["status"]["active"].is_null(), "{job}");
    assert!(job["status"]["completionTime"].is_string(), "{job}");
    let out = server.ok(&["get", "job", "work", "-n", &ns]);
    let rows = table(&out);
    assert_eq!(rows[1][1], "Complete", "{out}");
    assert_eq!(rows[1][2], "3/3", "{out}");
    assert!(events(&server, &ns).contains("Completed"));
}

#[test]
fn job_fails_after_its_backoff_limit() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "failing");
    let manifest = JOB
        .replace("completions: 3", "backoffLimit: 1")
        .replace("parallelism: 2", "parallelism: 1");
    server.ok_stdin(&["apply", "-n", &ns, "-f", "-"], &manifest);
    // Each failure is replaced until the second one, which exceeds the limit of 1.
    for attempt in 1..=2 {
        let pod = eventually("an active pod", SETTLE, || {
            let live = active(&pods(&server, &ns, "job-name=work"));
            (live.len() == 1).then(|| live[0].clone())
        });
        set_pod_status(&server, &ns, &name(&pod), json!({ "phase": "Failed" }));
        eventually("the failure to be counted", SETTLE, || {
            let job = server.json(&["get", "job", "work", "-n", &ns]);
            (job["status"]["failed"] == attempt).then_some(())
        });
    }
    let out = server.ok(&[
        "wait",
        "--for=condition=failed",
        "job/work",
        "-n",
        &ns,
        "--timeout=20s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    let job = server.json(&["get", "job", "work", "-n", &ns]);
    let failed = job["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Failed").cloned())
        .expect("Failed condition");
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{job}");
    assert!(active(&pods(&server, &ns, "job-name=work")).is_empty());
    assert!(events(&server, &ns).contains("BackoffLimitExceeded"));
}

#[test]
fn cronjob_runs_a_missed_schedule_and_sees_it_complete() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "cron");
    let manifest = r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
spec:
  schedule: "*/1 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: tick
            image: busybox
"#;
    server.ok_stdin(&["apply", "-n", &ns, "-f", "-"], manifest);
    // Pretend the last run was three minutes ago: the controller catches up with the most
    // recent missed time at once instead of waiting for the next minute.
    let three_minutes_ago = std::process::Command::new("date")
        .args(["-u", "-d", "-3 minutes", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    let then = String::from_utf8_lossy(&three_minutes_ago.stdout)
        .trim()
        .to_string();
    let patch = json!({ "status": { "lastScheduleTime": then } }).to_string();
    server.ok(&[
        "patch",
        "cronjob",
        "tick",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
    let job = eventually("a job from the cronjob", SETTLE, || {
        let list = server.json(&["get", "jobs", "-n", &ns]);
        list["items"].as_array().and_then(|i| i.first().cloned())
    });
    let job_name = name(&job);
    let minutes: i64 = job_name
        .strip_prefix("tick-")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("job name {job_name}"));
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let cj = server.json(&["get", "cronjob", "tick", "-n", &ns]);
    let scheduled = cj["status"]["lastScheduleTime"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(scheduled.ends_with(":00Z"), "{cj}");
    assert_ne!(scheduled, then, "{cj}");
    assert!(minutes > 0);
    assert_eq!(cj["status"]["active"][0]["name"], job_name.as_str(), "{cj}");

    // The job's pod succeeds; the job completes; the cronjob sees it. (If a minute turns
    // meanwhile, the next run is active by then: only this job must have left `active`.)
    let pod = eventually("the job's pod", SETTLE, || {
        pods(&server, &ns, &format!("job-name={job_name}"))
            .first()
            .cloned()
    });
    set_pod_status(&server, &ns, &name(&pod), json!({ "phase": "Succeeded" }));
    eventually("the cronjob to see the job complete", SETTLE, || {
        let cj = server.json(&["get", "cronjob", "tick", "-n", &ns]);
        let still_active = cj["status"]["active"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|job| job["name"] == job_name.as_str());
        (!still_active && cj["status"]["lastSuccessfulTime"].is_string()).then_some(())
    });
    assert!(events(&server, &ns).contains("SawCompletedJob"));
}

#[test]
fn statefulset_creates_pods_in_order_and_scales_down_from_the_top() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "sts");
    let manifest = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 3
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
      - name: db
        image: postgres
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {storage: 1Gi}
"#;
    server.ok_stdin(&["apply", "-n", &ns, "-f", "-"], manifest);
    for ordinal in 0..3 {
        let pod_name = format!("db-{ordinal}");
        let pod = eventually(&pod_name, SETTLE, || {
            pods(&server, &ns, "app=db")
                .into_iter()
                .find(|p| name(p) == pod_name)
        });
        // The next ordinal does not exist while this one is not ready.
        std::thread::sleep(Duration::from_millis(300));
        let names: Vec<String> = pods(&server, &ns, "app=db").iter().map(name).collect();
        assert_eq!(names.len(), ordinal + 1, "{names:?}");
        assert_eq!(pod["spec"]["hostname"], pod_name.as_str());
        assert_eq!(pod["spec"]["subdomain"], "db");
        let claim = format!("data-db-{ordinal}");
        let volumes = pod["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            volumes
                .iter()
                .any(|v| v["persistentVolumeClaim"]["claimName"] == claim.as_str()),
            "{pod}"
        );
        server.ok(&["get", "pvc", &claim, "-n", &ns]);
        mark_ready(&server, &ns, &pod_name);
    }
    let out = server.ok(&["rollout", "status", "sts/db", "-n", &ns, "--timeout=20s"]);
    assert!(
        out.contains("roll out complete") || out.contains("rolling update complete"),
        "{out}"
    );

    // A new template replaces the pods one at a time, from the highest ordinal down, each
    // only once the ones above it are ready again.
    let before = server.json(&["get", "sts", "db", "-n", &ns]);
    let old_revision = before["status"]["currentRevision"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!old_revision.is_empty(), "{before}");
    let patch =
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"db","image":"postgres:17"}]}}}}"#;
    server.ok(&["patch", "sts", "db", "-n", &ns, "--type=merge", "-p", patch]);
    let mut replaced: Vec<String> = Vec::new();
    eventually("the rolling update to finish", SETTLE, || {
        let sts = server.json(&["get", "sts", "db", "-n", &ns]);
        let live = pods(&server, &ns, "app=db");
        let not_ready: Vec<Value> = live.iter().filter(|p| !is_ready(p)).cloned().collect();
        assert!(
            not_ready.len() <= 1,
            "more than one pod down at once: {not_ready:?}"
        );
        for pod in &not_ready {
            // Only replacements (made from the new template) are ever down. (The status may
            // still name the old revision: it is written after the pod is made.)
            assert_ne!(
                pod["metadata"]["labels"]["controller-revision-hash"],
                old_revision.as_str()
            );
            if !replaced.contains(&name(pod)) {
                replaced.push(name(pod));
            }
            mark_ready(&server, &ns, &name(pod));
        }
        let s = &sts["status"];
        (s["currentRevision"] == s["updateRevision"]
            && s["updatedReplicas"] == 3
            && s["readyReplicas"] == 3
            && s["observedGeneration"] == sts["metadata"]["generation"])
            .then_some(())
    });
    assert_eq!(replaced, ["db-2", "db-1", "db-0"]);
    server.ok(&["rollout", "status", "sts/db", "-n", &ns, "--timeout=20s"]);

    // Scaling down removes the highest ordinal first.
    server.ok(&["scale", "sts", "db", "-n", &ns, "--replicas=1"]);
    eventually("db-2 to go first", SETTLE, || {
        let names: Vec<String> = pods(&server, &ns, "app=db").iter().map(name).collect();
        match names.len() {
            3 => None,
            2 => {
                assert_eq!(names, ["db-0", "db-1"]);
                None
            }
            _ => Some(()),
        }
    });
    let names: Vec<String> = pods(&server, &ns, "app=db").iter().map(name).collect();
    assert_eq!(names, ["db-0"]);
    // Claims are kept.
    let out = server.ok(&["get", "pvc", "-n", &ns, "-o", "name"]);
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn daemonset_runs_one_pod_per_ready_node() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "ds");
    for (node, ready) in [("node-a", "True"), ("node-b", "True"), ("node-c", "False")] {
        let manifest = format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n");
        server.ok_stdin(&["create", "-f", "-"], &manifest);
        let status = json!({ "status": { "conditions": [{ "type": "Ready", "status": ready }] } });
        server.ok(&[
            "patch",
            "node",
            node,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
    }
    let manifest = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: agent
        image: busybox
"#;
    server.ok_stdin(&["apply", "-n", &ns, "-f", "-"], manifest);
    let placed = eventually("a pod on each ready node", SETTLE, || {
        let mut nodes: Vec<String> = pods(&server, &ns, "app=agent")
            .iter()
            .map(|p| {
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        nodes.sort();
        (nodes.len() == 2).then_some(nodes)
    });
    assert_eq!(placed, ["node-a", "node-b"]);
    for pod in pods(&server, &ns, "app=agent") {
        mark_ready(&server, &ns, &name(&pod));
    }
    eventually("the daemonset status", SETTLE, || {
        let ds = server.json(&["get", "ds", "agent", "-n", &ns]);
        let s = &ds["status"];
        (s["desiredNumberScheduled"] == 2
            && s["currentNumberScheduled"] == 2
            && s["numberReady"] == 2
            && s["numberAvailable"] == 2
            && s["updatedNumberScheduled"] == 2)
            .then_some(())
    });
    let out = server.ok(&["rollout", "status", "ds/agent", "-n", &ns, "--timeout=20s"]);
    assert!(out.contains("successfully rolled out"), "{out}");

    // A node turning ready gets its pod.
    let status = json!({ "status": { "conditions": [{ "type": "Ready", "status": "True" }] } });
    server.ok(&[
        "patch",
        "node",
        "node-c",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    eventually("a pod on node-c", SETTLE, || {
        pods(&server, &ns, "app=agent")
            .iter()
            .any(|p| p["spec"]["nodeName"] == "node-c")
            .then_some(())
    });
}

#[test]
fn every_namespace_gets_a_default_service_account() {
    let server = TestServer::start(Backend::Sqlite);
    for ns in ["default", "kube-system"] {
        eventually("default service account", SETTLE, || {
            server
                .kubectl(&["get", "sa", "default", "-n", ns])
                .status
                .success()
                .then_some(())
        });
    }
    let ns = namespace(&server, "fresh");
    let first = eventually("default service account", SETTLE, || {
        let out = server.kubectl(&["get", "sa", "default", "-n", &ns, "-o", "json"]);
        out.status.success().then(|| {
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default()["metadata"]["uid"]
                .clone()
        })
    });
    // Deleted, it comes back (as a new object).
    server.ok(&["delete", "sa", "default", "-n", &ns]);
    eventually("the account to be recreated", SETTLE, || {
        let out = server.kubectl(&["get", "sa", "default", "-n", &ns, "-o", "json"]);
        let uid =
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default()["metadata"]["uid"]
                .clone();
        (out.status.success() && uid != first).then_some(())
    });
}
