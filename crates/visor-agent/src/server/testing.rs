//! TEST DOUBLES for the streaming endpoint, shared by this crate's endpoint tests and the
//! end-to-end tests that drive the endpoint through the API server. Built only with the
//! `testing` feature; nothing in the agent uses them.
//!
//! [`HostProcessRuntime`] stands in for a container runtime: an exec runs the requested argv
//! as a host process and a port-forward dials the port on 127.0.0.1, so a "pod's network" is
//! the host's loopback. It exercises the endpoint's protocols without runc.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpStream;

use crate::runtime::{
    ContainerConfig, ContainerStatus, ExecOutput, ExecStreams, PortStream, Runtime, RuntimeError,
    RuntimeResult, Sandbox, SandboxConfig, TerminalSize,
};

/// TEST DOUBLE runtime: exec runs the argv as a host process; port-forward connects to
/// 127.0.0.1:PORT. Every other runtime call is outside what the endpoint uses and fails with an
/// error saying so. Records what it was asked, for tests to check afterwards.
#[derive(Default)]
pub struct HostProcessRuntime {
    /// Terminal sizes the exec sessions reported, in order.
    pub resizes: Mutex<Vec<TerminalSize>>,
    /// The container IDs exec was asked to run in, in order.
    pub exec_container_ids: Mutex<Vec<String>>,
    /// The sandbox IDs port-forward was asked to reach, in order.
    pub forwarded_sandbox_ids: Mutex<Vec<String>>,
}

fn outside_this_double<T>() -> RuntimeResult<T> {
    Err(RuntimeError::Failed(
        "the streaming test runtime only runs exec and port-forward".into(),
    ))
}

#[async_trait]
impl Runtime for HostProcessRuntime {
    fn name(&self) -> &'static str {
        "test-host-processes"
    }
    fn version(&self) -> String {
        "0".into()
    }
    fn needs_images(&self) -> bool {
        false
    }
    async fn run_sandbox(&self, _: &SandboxConfig) -> RuntimeResult<Sandbox> {
        outside_this_double()
    }
    async fn stop_sandbox(&self, _: &str) -> RuntimeResult<()> {
        outside_this_double()
    }
    async fn remove_sandbox(&self, _: &str) -> RuntimeResult<()> {
        outside_this_double()
    }
    async fn list_sandboxes(&self) -> RuntimeResult<Vec<Sandbox>> {
        outside_this_double()
    }
    async fn create_container(&self, _: &Sandbox, _: &ContainerConfig) -> RuntimeResult<String> {
        outside_this_double()
    }
    async fn start_container(&self, _: &str) -> RuntimeResult<()> {
        outside_this_double()
    }
    async fn stop_container(&self, _: &str, _: Duration) -> RuntimeResult<()> {
        outside_this_double()
    }
    async fn remove_container(&self, _: &str) -> RuntimeResult<()> {
        outside_this_double()
    }
    async fn list_containers(&self) -> RuntimeResult<Vec<ContainerStatus>> {
        outside_this_double()
    }
    async fn container_status(&self, _: &str) -> RuntimeResult<ContainerStatus> {
        outside_this_double()
    }
    async fn exec_sync(&self, _: &str, _: &[String], _: Duration) -> RuntimeResult<ExecOutput> {
        outside_this_double()
    }

    /// Runs `argv` on the host with the session's streams wired to its stdio; resizes are
    /// recorded until the process ends.
    async fn exec(&self, id: &str, argv: &[String], streams: ExecStreams) -> RuntimeResult<i32> {
        self.exec_container_ids.lock().unwrap().push(id.to_string());
        let Some((program, args)) = argv.split_first() else {
            return Err(RuntimeError::Failed("exec without a command".into()));
        };
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut child_stdin = child.stdin.take();
        let mut child_stdout = child.stdout.take().expect("stdout is piped");
        let mut child_stderr = child.stderr.take().expect("stderr is piped");
        let ExecStreams {
            stdin,
            stdout,
            stderr,
            resize,
            ..
        } = streams;
        let feeding = tokio::spawn(async move {
            if let (Some(mut from), Some(to)) = (stdin, child_stdin.as_mut()) {
                let _ = tokio::io::copy(&mut from, to).await;
            }
            drop(child_stdin);
        });
        let copy_out = async move {
            if let Some(mut to) = stdout {
                let _ = tokio::io::copy(&mut child_stdout, &mut to).await;
            }
        };
        let copy_err = async move {
            if let Some(mut to) = stderr {
                let _ = tokio::io::copy(&mut child_stderr, &mut to).await;
            }
        };
        let resizes = async {
            if let Some(mut rx) = resize {
                while let Some(size) = rx.recv().await {
                    self.resizes.lock().unwrap().push(size);
                }
            }
            std::future::pending::<()>().await
        };
        let (_, _, status) = tokio::select! {
            done = async { tokio::join!(copy_out, copy_err, child.wait()) } => done,
            _ = resizes => unreachable!("never completes"),
        };
        feeding.abort();
        Ok(status?.code().unwrap_or(-1))
    }

    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> RuntimeResult<Box<dyn PortStream>> {
        self.forwarded_sandbox_ids
            .lock()
            .unwrap()
            .push(sandbox_id.to_string());
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        Ok(Box::new(stream))
    }
}
