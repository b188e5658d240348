//! `kubectl exec` over WebSocket: the Kubernetes remote-command channel protocol.
//!
//! After the upgrade every WebSocket binary message carries one stream's bytes, its first byte
//! naming the stream: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize. `v5.channel.k8s.io`
//! (what kubectl 1.30 and later ask for) adds 255, a signal that the sender is done with the
//! stream named by the second byte — how kubectl says stdin reached its end.
//!
//! The error stream carries, once, a `metav1.Status`: `Success`, or `Failure` with reason
//! `NonZeroExitCode` and the exit code as a cause, which kubectl turns into its own exit code.
//! Resize messages hold `{"Width":W,"Height":H}`. After the status the server closes the
//! WebSocket normally, which is how the client learns every stream has ended.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::runtime::{ExecStreams, Runtime, RuntimeError, TerminalSize};

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: "this stream is closed", followed by the stream's number.
pub const CLOSE: u8 = 255;

/// How long, after the command exited, its output streams may take to drain before the status
/// is sent anyway (a runtime that leaks a writer must not hang the session).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const PIPE_CAPACITY: usize = 64 * 1024;
/// How long the server waits for the client to answer its close frame before hanging up.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Picks the protocol to answer with from the client's `Sec-WebSocket-Protocol` offers.
pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    let offered: Vec<&str> = offered.into_iter().map(str::trim).collect();
    [V5, V4].into_iter().find(|p| offered.contains(p))
}

/// What the client asked to be connected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecRequest {
    /// Parses `command=..&command=..&stdin=..&stdout=..&stderr=..&tty=..` as the kubelet does:
    /// a command and at least one stream are required; with a terminal, stderr is not a
    /// separate stream.
    pub fn parse(query: Option<&str>) -> Result<ExecRequest, String> {
        let mut request = ExecRequest::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let flag = || matches!(&*value, "" | "1" | "true" | "True" | "TRUE" | "t" | "T");
            match &*key {
                "command" => request.command.push(value.to_string()),
                "stdin" | "input" => request.stdin = flag(),
                "stdout" | "output" => request.stdout = flag(),
                "stderr" | "error" => request.stderr = flag(),
                "tty" => request.tty = flag(),
                _ => {}
            }
        }
        if request.command.is_empty() {
            return Err("you must specify a command".into());
        }
        if !(request.stdin || request.stdout || request.stderr) {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        if request.tty && request.stderr {
            // Upstream: with a terminal, stderr is merged into stdout.
            request.stderr = false;
        }
        Ok(request)
    }
}

/// The status sent on the error stream when the command ended with `result`.
pub fn exit_status(command: &[String], result: &Result<i32, RuntimeError>) -> Value {
    match result {
        Ok(0) => {
            json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success" })
        }
        Ok(code) => json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": { "causes": [ { "reason": "ExitCode", "message": code.to_string() } ] },
        }),
        Err(e) => json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("error executing command {command:?}: {e}"),
            "reason": "InternalError",
            "code": 500,
        }),
    }
}

/// Terminal sizes in one resize message (kubectl sends one JSON object per message; a message
/// holding several is accepted too). Malformed ones are skipped.
pub fn parse_resizes(data: &[u8]) -> Vec<TerminalSize> {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
    serde_json::Deserializer::from_slice(data)
        .into_iter::<Size>()
        .map_while(Result::ok)
        .map(|s| TerminalSize {
            width: s.width,
            height: s.height,
        })
        .collect()
}

/// Runs `request` in container `container_id` with its streams joined to the upgraded
/// connection, then reports the exit status and closes the WebSocket.
///
/// Flow: the runtime gets pipe ends for the requested streams; one task forwards stdout and
/// stderr into WebSocket messages, another reads the client's messages (stdin data, resizes,
/// v5 close signals). When the command exits, its output is drained (up to 2 s if a writer
/// lingers), the status goes out on the error stream and the connection closes with a normal
/// closure.
///
/// Caveat: if the client goes away first, the runtime's exec future is dropped, which the
/// runtime must treat as "kill the command".
pub async fn run(
    upgraded: Upgraded,
    protocol: &'static str,
    runtime: Arc<dyn Runtime>,
    container_id: String,
    request: ExecRequest,
) {
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        None,
    )
    .await;
    let (mut sink, mut incoming) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sink.send(message).await.is_err() {
                return None;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.flush().await;
        Some(sink)
    });

    let (stdin_ours, stdin_theirs) = if request.stdin {
        let (a, b) = tokio::io::duplex(PIPE_CAPACITY);
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let mut forwarders = Vec::new();
    let mut output = |wanted: bool, channel: u8| {
        if !wanted {
            return None;
        }
        let (ours, mut theirs) = tokio::io::duplex(PIPE_CAPACITY);
        let out_tx = out_tx.clone();
        forwarders.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match theirs.read(&mut buf[1..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf[0] = channel;
                        let message = Message::Binary(Bytes::copy_from_slice(&buf[..n + 1]));
                        if out_tx.send(message).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }));
        Some(ours)
    };
    let stdout = output(request.stdout, STDOUT);
    let stderr = output(request.stderr, STDERR);
    let (resize_tx, resize_rx) = mpsc::channel(8);
    let streams = ExecStreams {
        stdin: stdin_theirs.map(|s| Box::pin(s) as _),
        stdout: stdout.map(|s| Box::pin(s) as _),
        stderr: stderr.map(|s| Box::pin(s) as _),
        tty: request.tty,
        resize: request.tty.then_some(resize_rx),
    };

    let command = request.command.clone();
    let v5 = protocol == V5;
    let mut stdin = stdin_ours;
    let finished = {
        let reading = read_client(&mut incoming, &mut stdin, resize_tx, v5);
        tokio::pin!(reading);
        let exec = runtime.exec(&container_id, &request.command, streams);
        let result = tokio::select! {
            result = exec => Some(result),
            _ = &mut reading => None,
        };
        match result {
            None => {
                tracing::debug!(container = %container_id, "exec client went away; command dropped");
                for forwarder in &forwarders {
                    forwarder.abort();
                }
                writer.abort();
                None
            }
            Some(result) => {
                let drained = async {
                    for forwarder in forwarders {
                        let _ = forwarder.await;
                    }
                };
                if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
                    tracing::debug!(container = %container_id, "exec output still open after the command exited");
                }
                let status = exit_status(&command, &result);
                let mut message = vec![ERROR];
                message.extend_from_slice(&serde_json::to_vec(&status).expect("JSON serialises"));
                let _ = out_tx.send(Message::Binary(Bytes::from(message))).await;
                drop(out_tx);
                let sink = writer.await.ok().flatten();
                // The client answers the close frame; give it a moment before hanging up.
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut reading).await;
                sink
            }
        }
    };
    // Close the transport properly (TLS close_notify), not just drop it.
    if let Some(sink) = finished
        && let Ok(mut ws) = sink.reunite(incoming)
    {
        let _ = ws.get_mut().shutdown().await;
    }
}

/// Reads the client's messages — stdin data, resizes, v5 close signals — until it closes the
/// connection.
async fn read_client<S>(
    incoming: &mut S,
    stdin: &mut Option<tokio::io::DuplexStream>,
    resize_tx: mpsc::Sender<TerminalSize>,
    v5: bool,
) where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(message) = incoming.next().await {
        let data = match message {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) | Err(_) => break,
            // Text frames belong to the base64 protocols this server does not offer.
            Ok(_) => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            STDIN => {
                if let Some(pipe) = stdin.as_mut()
                    && pipe.write_all(payload).await.is_err()
                {
                    // The command closed its stdin; later input has nowhere to go.
                    *stdin = None;
                }
            }
            RESIZE => {
                for size in parse_resizes(payload) {
                    let _ = resize_tx.try_send(size);
                }
            }
            CLOSE if v5 && payload.first() == Some(&STDIN) => *stdin = None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_v5() {
        assert_eq!(negotiate([V4, V5]), Some(V5));
        assert_eq!(negotiate([" v4.channel.k8s.io"]), Some(V4));
        assert_eq!(negotiate(["channel.k8s.io", "base64.channel.k8s.io"]), None);
    }

    #[test]
    fn request_parsing_follows_the_kubelet() {
        let r = ExecRequest::parse(Some(
            "command=sh&command=-c&command=echo+hi%3Bexit+3&stdout=true&stderr=true",
        ))
        .unwrap();
        assert_eq!(r.command, vec!["sh", "-c", "echo hi;exit 3"]);
        assert!(r.stdout && r.stderr && !r.stdin && !r.tty);
        let r = ExecRequest::parse(Some("command=sh&stdin=1&stdout=1&stderr=1&tty=1")).unwrap();
        assert!(r.tty && r.stdin && !r.stderr, "a terminal merges stderr");
        assert!(ExecRequest::parse(Some("stdout=1")).is_err());
        assert!(ExecRequest::parse(Some("command=ls")).is_err());
    }

    #[test]
    fn status_carries_the_exit_code_as_kubectl_reads_it() {
        let command = vec!["false".to_string()];
        assert_eq!(exit_status(&command, &Ok(0))["status"], "Success");
        let failed = exit_status(&command, &Ok(3));
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        let broken = exit_status(&command, &Err(RuntimeError::NotFound("container x".into())));
        assert_eq!(broken["reason"], "InternalError");
        assert!(
            broken["message"]
                .as_str()
                .unwrap()
                .contains("container x not found")
        );
    }

    #[test]
    fn resize_messages() {
        assert_eq!(
            parse_resizes(br#"{"Width":120,"Height":40}"#),
            vec![TerminalSize {
                width: 120,
                height: 40
            }]
        );
        assert_eq!(
            parse_resizes(br#"{"Width":1,"Height":2}{"Width":3,"Height":4}"#).len(),
            2
        );
        assert!(parse_resizes(b"garbage").is_empty());
    }
}
