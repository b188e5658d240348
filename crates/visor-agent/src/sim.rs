//! The `sim` runtime: simulated hosts for scale work, like kwok. Pods move through their
//! phases — sandbox, containers created and running, stopped on deletion — without anything
//! running. Pod IPs come from the host's pod CIDR so status looks real, but nothing answers
//! on them; exec and port-forward say so.
//!
//! Caveat: state lives in memory, so a restarted simulated host starts its pods again.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, ExecOutput, ExecStreams, PortStream, Runtime,
    RuntimeError, RuntimeResult, Sandbox, SandboxConfig,
};

#[derive(Default)]
struct State {
    sandboxes: HashMap<String, Sandbox>,
    containers: HashMap<String, ContainerStatus>,
    next_id: u64,
    free_ips: Vec<Ipv4Addr>,
}

/// A runtime that runs nothing (see the module documentation).
pub struct SimRuntime {
    state: Mutex<State>,
}

impl SimRuntime {
    /// A simulated host whose pods get addresses from `pod_cidr`.
    pub fn new(pod_cidr: Option<ipnet::Ipv4Net>) -> Self {
        // Hosts beyond the network and gateway addresses, handed out lowest first.
        let mut free_ips: Vec<Ipv4Addr> = pod_cidr
            .map(|net| net.hosts().skip(1).collect())
            .unwrap_or_default();
        free_ips.reverse();
        SimRuntime {
            state: Mutex::new(State {
                free_ips,
                ..Default::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn unsupported(what: &str) -> RuntimeError {
    RuntimeError::InvalidState(format!(
        "{what} is not available: this is a simulated host, nothing runs on it"
    ))
}

#[async_trait]
impl Runtime for SimRuntime {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn version(&self) -> String {
        format!("sim://visor-{}", env!("CARGO_PKG_VERSION"))
    }

    fn needs_images(&self) -> bool {
        false
    }

    fn simulated(&self) -> bool {
        true
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> RuntimeResult<Sandbox> {
        let mut state = self.state();
        state.next_id += 1;
        let ip = if config.host_network {
            None
        } else {
            state.free_ips.pop().map(IpAddr::V4)
        };
        let sandbox = Sandbox {
            id: format!("sim-{:08x}", state.next_id),
            pod_uid: config.pod_uid.clone(),
            namespace: config.namespace.clone(),
            name: config.name.clone(),
            ip,
            netns: None,
            created: SystemTime::now(),
            ready: true,
        };
        state.sandboxes.insert(sandbox.id.clone(), sandbox.clone());
        Ok(sandbox)
    }

    async fn stop_sandbox(&self, id: &str) -> RuntimeResult<()> {
        let mut state = self.state();
        let now = SystemTime::now();
        for container in state.containers.values_mut() {
            if container.sandbox_id == id && container.state == ContainerState::Running {
                stop(container, now);
            }
        }
        if let Some(sandbox) = state.sandboxes.get_mut(id) {
            sandbox.ready = false;
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> RuntimeResult<()> {
        let mut state = self.state();
        state.containers.retain(|_, c| c.sandbox_id != id);
        if let Some(sandbox) = state.sandboxes.remove(id)
            && let Some(IpAddr::V4(ip)) = sandbox.ip
        {
            state.free_ips.push(ip);
        }
        Ok(())
    }

    async fn list_sandboxes(&self) -> RuntimeResult<Vec<Sandbox>> {
        Ok(self.state().sandboxes.values().cloned().collect())
    }

    async fn create_container(
        &self,
        sandbox: &Sandbox,
        config: &ContainerConfig,
    ) -> RuntimeResult<String> {
        let mut state = self.state();
        if !state.sandboxes.contains_key(&sandbox.id) {
            return Err(RuntimeError::NotFound(format!("sandbox {}", sandbox.id)));
        }
        state.next_id += 1;
        let id = format!("sim-{:08x}", state.next_id);
        state.containers.insert(
            id.clone(),
            ContainerStatus {
                id: id.clone(),
                sandbox_id: sandbox.id.clone(),
                name: config.name.clone(),
                attempt: config.attempt,
                state: ContainerState::Created,
                image: config.image.clone(),
                created_at: SystemTime::now(),
                started_at: None,
                finished_at: None,
                exit_code: None,
                reason: None,
                log_path: config.log_path.clone(),
                labels: config.labels.clone(),
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> RuntimeResult<()> {
        let mut state = self.state();
        let container = state
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        container.state = ContainerState::Running;
        container.started_at = Some(SystemTime::now());
        Ok(())
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> RuntimeResult<()> {
        if let Some(container) = self.state().containers.get_mut(id)
            && container.state != ContainerState::Exited
        {
            stop(container, SystemTime::now());
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> RuntimeResult<()> {
        self.state().containers.remove(id);
        Ok(())
    }

    async fn list_containers(&self) -> RuntimeResult<Vec<ContainerStatus>> {
        Ok(self.state().containers.values().cloned().collect())
    }

    async fn container_status(&self, id: &str) -> RuntimeResult<ContainerStatus> {
        self.state()
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))
    }

    async fn exec_sync(
        &self,
        _id: &str,
        _argv: &[String],
        _timeout: Duration,
    ) -> RuntimeResult<ExecOutput> {
        // Exec probes of simulated pods succeed: there is no process to fail them.
        Ok(ExecOutput::default())
    }

    async fn exec(&self, _id: &str, _argv: &[String], _streams: ExecStreams) -> RuntimeResult<i32> {
        Err(unsupported("exec"))
    }

    async fn port_forward(
        &self,
        _sandbox_id: &str,
        _port: u16,
    ) -> RuntimeResult<Box<dyn PortStream>> {
        Err(unsupported("port-forward"))
    }
}

/// A simulated container stops as a well-behaved process does on SIGTERM.
fn stop(container: &mut ContainerStatus, now: SystemTime) {
    container.state = ContainerState::Exited;
    container.finished_at = Some(now);
    container.exit_code = Some(0);
    container.reason = Some("Completed".into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pods_get_addresses_and_containers_run_until_stopped() {
        let runtime = SimRuntime::new(Some("10.90.0.0/30".parse().unwrap()));
        let config = SandboxConfig {
            pod_uid: "u1".into(),
            ..Default::default()
        };
        let first = runtime.run_sandbox(&config).await.unwrap();
        // .0 is the network, .1 the gateway: the first pod gets .2.
        assert_eq!(first.ip, Some("10.90.0.2".parse().unwrap()));
        let second = runtime.run_sandbox(&config).await.unwrap();
        assert_eq!(second.ip, None, "a /30 has one address for pods");
        let id = runtime
            .create_container(&first, &ContainerConfig::default())
            .await
            .unwrap();
        runtime.start_container(&id).await.unwrap();
        assert_eq!(
            runtime.container_status(&id).await.unwrap().state,
            ContainerState::Running
        );
        runtime.stop_sandbox(&first.id).await.unwrap();
        let stopped = runtime.container_status(&id).await.unwrap();
        assert_eq!(stopped.state, ContainerState::Exited);
        assert_eq!(stopped.reason.as_deref(), Some("Completed"));
        runtime.remove_sandbox(&first.id).await.unwrap();
        assert!(runtime.container_status(&id).await.is_err());
        let third = runtime.run_sandbox(&config).await.unwrap();
        assert_eq!(third.ip, first.ip, "a removed pod's address is reused");
    }
}
