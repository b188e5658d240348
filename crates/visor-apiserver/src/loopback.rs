//! The way in for clients that run inside `visor server` (the controllers and the scheduler):
//! their requests go to the server's handler directly, as the identity they were given, instead
//! of through TLS and a socket to the server's own port.
//!
//! Only the transport differs. Each request is still authorised, admitted, audited and
//! answered by the same code as any other client's (watches included), so these clients use
//! the public API as before and work unchanged against a remote server. What goes is the cost
//! of a connection per request in flight — every watch held one, with its TLS session and
//! buffers on both ends — and encrypting, framing and parsing traffic the process sends to
//! itself.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;

use crate::auth::{ClientAddr, Identity};
use crate::handler::{Body, BoxError, Handler};

/// What the audit log shows as these clients' `userAgent` when they name none.
const USER_AGENT: &str = concat!("visor/", env!("CARGO_PKG_VERSION"), " (in-process)");

/// A [`tower::Service`] that answers requests as the server would answer `identity` over a
/// connection from the loopback address.
#[derive(Clone)]
pub struct Loopback {
    handler: Arc<Handler>,
    identity: Identity,
}

impl Loopback {
    pub(crate) fn new(handler: Arc<Handler>, identity: Identity) -> Self {
        Self { handler, identity }
    }
}

impl<B> tower::Service<Request<B>> for Loopback
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let handler = self.handler.clone();
        let identity = self.identity.clone();
        let mut request = request.map(|body| body.map_err(Into::into).boxed_unsync());
        // The audit log records where a request came from and with what.
        request
            .extensions_mut()
            .insert(ClientAddr(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
        request
            .headers_mut()
            .entry(http::header::USER_AGENT)
            .or_insert(HeaderValue::from_static(USER_AGENT));
        Box::pin(async move { Ok(handler.handle(request, Some(identity)).await) })
    }
}
