//! `kubectl port-forward`: SPDY streams carried either on the upgraded connection itself
//! (`Upgrade: SPDY/3.1`) or inside WebSocket binary messages (subprotocol
//! `SPDY/3.1+portforward.k8s.io`, which kubectl 1.31 and later try first).
//!
//! The client opens two streams per forwarded connection, both with headers `port` and
//! `requestID`: `streamType: error` and `streamType: data`. Once both of a request are there,
//! the agent connects to the port inside the pod's network through the runtime and copies
//! bytes both ways over the data stream; a failure is written, as text, to the error stream.
//! Both streams are half-closed when the pod's side of the connection ends.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::spdy::{self, RST_PROTOCOL_ERROR};
use crate::runtime::Runtime;

/// The SPDY sub-protocol name, and the WebSocket sub-protocol that tunnels it.
pub const PROTOCOL: &str = "portforward.k8s.io";
pub const TUNNELED_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Where forwarded connections go.
#[derive(Clone)]
pub struct Target {
    pub runtime: Arc<dyn Runtime>,
    pub sandbox_id: String,
    /// `namespace/name`, for error messages.
    pub pod: String,
}

/// Serves one port-forward session on an upgraded byte stream until the client leaves or
/// `shutdown` fires.
pub async fn serve<IO>(io: IO, target: Target, shutdown: CancellationToken)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (streams_tx, mut streams_rx) = mpsc::channel(16);
    let cancel = shutdown.child_token();
    let connection = tokio::spawn(spdy::serve_connection(io, streams_tx, cancel.clone()));
    let mut pending: HashMap<String, (Option<spdy::Stream>, Option<spdy::Stream>)> = HashMap::new();
    while let Some(stream) = streams_rx.recv().await {
        let kind = spdy::header(&stream.headers, "streamType").map(str::to_ascii_lowercase);
        let Some(request_id) = spdy::header(&stream.headers, "requestID").map(str::to_string)
        else {
            // Clients older than Kubernetes 1.4 pair streams by ID; none speak WebSocket or
            // are still supported, so such a stream is refused.
            let _ = stream.writer.reset(RST_PROTOCOL_ERROR).await;
            continue;
        };
        let entry = pending.entry(request_id.clone()).or_default();
        match kind.as_deref() {
            Some("data") if entry.0.is_none() => entry.0 = Some(stream),
            Some("error") if entry.1.is_none() => entry.1 = Some(stream),
            _ => {
                let _ = stream.writer.reset(RST_PROTOCOL_ERROR).await;
                continue;
            }
        }
        if let (Some(_), Some(_)) = entry {
            let Some((Some(data), Some(error))) = pending.remove(&request_id) else {
                continue;
            };
            tokio::spawn(forward(target.clone(), data, error, cancel.clone()));
        }
    }
    cancel.cancel();
    if let Ok(Err(e)) = connection.await {
        tracing::debug!(pod = %target.pod, error = %e, "port-forward connection ended");
    }
}

/// One forwarded connection: pod port ↔ data stream.
async fn forward(
    target: Target,
    mut data: spdy::Stream,
    error: spdy::Stream,
    cancel: CancellationToken,
) {
    let port = spdy::header(&data.headers, "port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0);
    let outcome = match port {
        None => Err(format!(
            "invalid port {:?}",
            spdy::header(&data.headers, "port").unwrap_or("")
        )),
        Some(port) => match target.runtime.port_forward(&target.sandbox_id, port).await {
            Err(e) => Err(format!(
                "error forwarding port {port} to pod {}: {e}",
                target.pod
            )),
            Ok(conn) => {
                let (mut pod_read, mut pod_write) = tokio::io::split(conn);
                // Client → pod; the client's FIN half-closes the pod connection.
                let upstream = tokio::spawn(async move {
                    while let Some(chunk) = data.incoming.recv().await {
                        if pod_write.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = pod_write.shutdown().await;
                });
                // Pod → client, until the pod closes its side.
                let writer = data.writer.clone();
                let downstream = async move {
                    let mut buf = BytesMut::with_capacity(spdy::MAX_DATA_CHUNK);
                    loop {
                        buf.clear();
                        match pod_read.read_buf(&mut buf).await {
                            Ok(0) => return Ok(()),
                            Ok(_) => {
                                if writer.send(buf.split().freeze()).await.is_err() {
                                    return Ok(());
                                }
                            }
                            Err(e) => return Err(e),
                        }
                    }
                };
                let result = tokio::select! {
                    result = downstream => result,
                    _ = cancel.cancelled() => Ok(()),
                };
                upstream.abort();
                result
                    .map_err(|e| format!("error forwarding port {port} to pod {}: {e}", target.pod))
            }
        },
    };
    if let Err(message) = outcome {
        tracing::debug!(pod = %target.pod, %message, "port-forward failed");
        let _ = error.writer.send(Bytes::from(message)).await;
    }
    let _ = data.writer.finish().await;
    let _ = error.writer.finish().await;
}

/// Carries a byte stream inside a WebSocket's binary messages, as kubectl's tunneling
/// connection does: what is written to the returned end goes out as messages, and the
/// payloads of messages received are read from it, in order.
pub fn websocket_as_io<S>(ws: WebSocketStream<S>, shutdown: CancellationToken) -> DuplexStream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let (mut sink, mut messages) = ws.split();
        let (mut read_half, mut write_half) = tokio::io::split(ours);
        let outgoing = async {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                buf.clear();
                match read_half.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if sink
                            .send(Message::Binary(buf.split().freeze()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = sink.send(Message::Close(None)).await;
            let _ = sink.flush().await;
        };
        let incoming = async {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(Message::Binary(data)) => {
                        if write_half.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = write_half.shutdown().await;
        };
        let finished = tokio::select! {
            _ = async { tokio::join!(outgoing, incoming) } => true,
            _ = shutdown.cancelled() => false,
        };
        // Close the transport properly (TLS close_notify), not just drop it.
        if finished && let Ok(mut ws) = sink.reunite(messages) {
            let _ = ws.get_mut().shutdown().await;
        }
    });
    theirs
}
