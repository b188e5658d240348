//! A pod's status as upstream's kubelet reports it: phase, conditions, container states.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::runtime::{ContainerState, ContainerStatus};

/// What the worker knows about one container of the pod.
pub struct ContainerView<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub current: Option<&'a ContainerStatus>,
    pub previous: Option<&'a ContainerStatus>,
    pub restart_count: u32,
    /// Why it is not running, when the worker has a reason (back-off, image pull, config).
    pub waiting: Option<(&'a str, &'a str)>,
    pub ready: bool,
    pub started: bool,
    pub runtime: &'a str,
}

pub fn rfc3339(t: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn terminated(c: &ContainerStatus, runtime: &str) -> Value {
    let mut t = json!({
        "exitCode": c.exit_code.unwrap_or(0),
        "reason": c.reason.clone().unwrap_or_else(|| "Error".into()),
        "containerID": format!("{runtime}://{}", c.id),
    });
    if let Some(s) = c.started_at {
        t["startedAt"] = json!(rfc3339(s));
    }
    if let Some(f) = c.finished_at {
        t["finishedAt"] = json!(rfc3339(f));
    }
    t
}

/// One entry of `containerStatuses` / `initContainerStatuses`.
pub fn container_status(view: &ContainerView<'_>) -> Value {
    let state = match (view.current, view.waiting) {
        (Some(c), _) if c.state == ContainerState::Running => {
            json!({ "running": { "startedAt": c.started_at.map(rfc3339) } })
        }
        (_, Some((reason, message))) => {
            json!({ "waiting": { "reason": reason, "message": message } })
        }
        (Some(c), None) if c.state == ContainerState::Exited => {
            json!({ "terminated": terminated(c, view.runtime) })
        }
        _ => json!({ "waiting": { "reason": "ContainerCreating" } }),
    };
    let last_state = match view.previous {
        Some(p) if p.state == ContainerState::Exited => {
            json!({ "terminated": terminated(p, view.runtime) })
        }
        _ => json!({}),
    };
    let mut status = json!({
        "name": view.name,
        "image": view.image,
        "imageID": view.current.map(|c| c.image.id.clone()).unwrap_or_default(),
        "ready": view.ready,
        "started": view.started,
        "restartCount": view.restart_count,
        "state": state,
        "lastState": last_state,
    });
    if let Some(c) = view.current {
        status["containerID"] = json!(format!("{}://{}", view.runtime, c.id));
    }
    status
}

/// Upstream's `getPhase`: from the containers' states and the restart policy.
pub fn phase(
    init: &[ContainerView<'_>],
    app: &[ContainerView<'_>],
    restart_policy: &str,
    initialized: bool,
) -> &'static str {
    let failed_init = init.iter().any(|c| {
        c.current
            .is_some_and(|s| s.state == ContainerState::Exited && s.exit_code != Some(0))
    });
    if !initialized {
        return if failed_init && restart_policy == "Never" {
            "Failed"
        } else {
            "Pending"
        };
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in app {
        match c.current.map(|s| s.state) {
            Some(ContainerState::Running) => running += 1,
            Some(ContainerState::Exited) => {
                stopped += 1;
                if c.current.and_then(|s| s.exit_code) == Some(0) {
                    succeeded += 1;
                }
            }
            _ if c.previous.is_some() => stopped += 1,
            _ => waiting += 1,
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        };
    }
    "Pending"
}

/// The pod's app containers, then its init containers.
pub fn all_containers(pod: &Pod) -> Vec<&k8s_openapi::api::core::v1::Container> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .collect()
}

/// The QoS class upstream derives from requests and limits.
pub fn qos_class(pod: &Pod) -> &'static str {
    let containers = all_containers(pod);
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let r = c.resources.clone().unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        let limits = r.limits.unwrap_or_default();
        if !requests.is_empty() || !limits.is_empty() {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            match (requests.get(resource), limits.get(resource)) {
                (_, None) => guaranteed = false,
                (Some(req), Some(lim)) if req != lim => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// A condition, keeping the previous transition time when the status did not change.
pub fn condition(pod: &Pod, type_: &str, status: bool, reason: Option<&str>, now: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let previous = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_));
    let transition = match previous {
        Some(p) if p.status == status => p
            .last_transition_time
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| now.to_string()),
        _ => now.to_string(),
    };
    let mut value = json!({
        "type": type_,
        "status": status,
        "lastProbeTime": null,
        "lastTransitionTime": transition,
    });
    if let Some(reason) = reason {
        value["reason"] = json!(reason);
    }
    value
}
