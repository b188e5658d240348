//! From an HTTP request to a response: authentication check, content negotiation, routing to
//! discovery or to the registry's verbs, and encoding the result.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use crate::auth::Identity;
use crate::discovery;
use crate::errors::{ApiError, ApiResult};
use crate::kinds::{ResourceDef, Subresource};
use crate::patch;
use crate::registry::{DeleteOptions, ListResult, Registry, Scope, decode_body};
use crate::request::{Query, ResourcePath, Target, parse_path};
use crate::table::{self, IncludeObject};
use crate::watch::{self, WatchFormat};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A request's body, whichever transport brought it: a connection's (`hyper`'s) or the
/// in-process controllers' (see [`crate::loopback`]).
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Upstream's limit on request bodies.
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// How much of an oversized body is read (and discarded) before answering 413, so the client,
/// still sending, reads the answer instead of a reset connection.
const DRAIN_LIMIT: usize = 4 * MAX_BODY;

const JSON: &str = "application/json";
const TABLE_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// What the server knows about itself that responses mention.
pub struct ServerInfo {
    pub address: String,
}

pub struct Handler {
    pub registry: Arc<Registry>,
    pub info: ServerInfo,
    pub health:
        Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>,
    /// RBAC decisions (`rbac/`).
    pub authorizer: Arc<crate::rbac::Authorizer>,
    /// Bearer tokens, `/login` and `/join` (`auth/`).
    pub authenticator: Arc<crate::auth::Authenticator>,
    /// Where each request is recorded (`audit.rs`).
    pub audit: Arc<crate::audit::AuditLog>,
    /// Pod logs, exec, attach and port-forward, relayed to the pod's node (`proxy.rs`).
    pub node_proxy: Arc<crate::proxy::NodeProxy>,
}

/// The response format a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
    Table(IncludeObject),
    /// `PartialObjectMetadata(List)`: only each object's metadata.
    Metadata,
    Discovery(&'static str),
}

/// Picks the first acceptable media type of an Accept header, in the client's order.
fn negotiate(
    accept: Option<&str>,
    discovery_allowed: bool,
    include: IncludeObject,
) -> ApiResult<Format> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Format::Json);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut as_kind = None;
        let mut version = None;
        let mut group = None;
        for p in parts {
            match p.split_once('=') {
                Some(("as", v)) => as_kind = Some(v),
                Some(("v", v)) => version = Some(v),
                Some(("g", v)) => group = Some(v),
                _ => {}
            }
        }
        match (media.as_str(), as_kind) {
            ("application/json", Some("Table"))
                if group == Some("meta.k8s.io") && version == Some("v1") =>
            {
                return Ok(Format::Table(include));
            }
            ("application/json", Some("PartialObjectMetadata" | "PartialObjectMetadataList"))
                if group == Some("meta.k8s.io") && version == Some("v1") =>
            {
                return Ok(Format::Metadata);
            }
            ("application/json", Some("APIGroupDiscoveryList"))
                if discovery_allowed && group == Some("apidiscovery.k8s.io") =>
            {
                match version {
                    Some("v2") => return Ok(Format::Discovery("v2")),
                    Some("v2beta1") => return Ok(Format::Discovery("v2beta1")),
                    _ => {}
                }
            }
            ("application/json" | "*/*" | "application/*", None) => return Ok(Format::Json),
            ("application/yaml", None) => return Ok(Format::Yaml),
            _ => {}
        }
    }
    Err(ApiError::not_acceptable(accept))
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static(JSON)),
    );
    response
}

pub fn error_response(err: &ApiError) -> Response<Body> {
    respond(
        err.code,
        JSON,
        serde_json::to_vec(&err.status()).expect("JSON serialises"),
    )
}

fn encode(status: u16, format: Format, value: &Value) -> Response<Body> {
    match format {
        Format::Yaml => match serde_saphyr::to_string(value) {
            Ok(text) => respond(status, "application/yaml", text),
            Err(e) => error_response(&ApiError::internal(format!("encoding YAML: {e}"))),
        },
        _ => respond(
            status,
            JSON,
            serde_json::to_vec(value).expect("JSON serialises"),
        ),
    }
}

impl Handler {
    pub async fn handle(
        &self,
        request: Request<RequestBody>,
        identity: Option<Identity>,
    ) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let started = std::time::Instant::now();
        // Health probes are polled constantly and carry no user action: not audited.
        let mut audit = (!is_health_path(&path)).then(|| crate::audit::AuditEvent::begin(&request));
        let response = match self.route(request, identity, audit.as_mut()).await {
            Ok(response) => response,
            Err(err) => error_response(&err),
        };
        if let Some(mut event) = audit {
            event.code = response.status().as_u16();
            self.audit.record(event);
        }
        tracing::debug!(%method, %path, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
        response
    }

    async fn route(
        &self,
        request: Request<RequestBody>,
        identity: Option<Identity>,
        audit: Option<&mut crate::audit::AuditEvent>,
    ) -> ApiResult<Response<Body>> {
        let path = request.uri().path().to_string();
        match (request.method(), path.as_str()) {
            (&Method::GET, "/healthz" | "/livez" | "/readyz") => {
                return Ok(self.health(&path, request.uri().query()).await);
            }
            (&Method::GET, p)
                if p.starts_with("/healthz/")
                    || p.starts_with("/livez/")
                    || p.starts_with("/readyz/") =>
            {
                return Ok(self.health(&path, request.uri().query()).await);
            }
            (&Method::GET, "/version") => return Ok(encode(200, Format::Json, &version())),
            (&Method::POST, "/login") => {
                let address = crate::auth::client_ip(&request);
                let answer = self
                    .authenticator
                    .login(request.headers(), address, &self.authorizer)
                    .await?;
                return Ok(encode(200, Format::Json, &answer));
            }
            (&Method::POST, "/join") => {
                let headers = request.headers().clone();
                let body = read_body(request).await?;
                let answer = self.authenticator.join(&headers, &body)?;
                return Ok(encode(200, Format::Json, &answer));
            }
            _ => {}
        }
        // A client certificate, else a bearer token (401 if it does not verify).
        let identity = self
            .authenticator
            .authenticate(identity, request.headers())?;
        let Some(identity) = identity else {
            return Err(ApiError::unauthorized());
        };
        let mut audit = audit;
        if let Some(event) = audit.as_deref_mut() {
            event.user = Some((identity.user.clone(), identity.groups.clone()));
        }
        // RBAC: impersonation, then authorisation of this request (403 when denied). The
        // requester rides along for admission and access reviews (see `rbac::Requester`).
        let requester = crate::rbac::admit(&self.authorizer, identity, &request);
        if let (Some(event), Ok(requester)) = (audit, &requester)
            && event.user.as_ref().is_some_and(|(user, groups)| {
                *user != requester.identity.user || *groups != requester.identity.groups
            })
        {
            let who = &requester.identity;
            event.impersonated = Some((who.user.clone(), who.groups.clone()));
        }
        let requester = requester?;
        if let Some((namespace, name)) = token_request_target(&request) {
            let content_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = read_body(request).await?;
            let answer = crate::auth::serviceaccount::token_request(
                &self.authenticator,
                &requester.identity.user,
                &namespace,
                &name,
                decode_body(&body, &content_type)?,
            )?;
            return Ok(encode(201, Format::Json, &answer));
        }
        if crate::openapi::is_openapi_path(&path) {
            return crate::openapi::serve(
                &self.registry.catalog,
                request.method(),
                &path,
                request.uri().query(),
                request.headers(),
            );
        }
        let mut query = Query::parse(request.uri().query())?;
        query.user_agent = request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let include =
            IncludeObject::parse(query.include_object.as_deref()).map_err(ApiError::bad_request)?;
        let accept = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let target = parse_path(&path)?;
        let discovery_allowed = matches!(target, Target::LegacyVersions | Target::Groups);
        let format = negotiate(accept.as_deref(), discovery_allowed, include)?;
        match target {
            Target::LegacyVersions
            | Target::Groups
            | Target::Group(_)
            | Target::ResourceList { .. } => {
                if request.method() != Method::GET {
                    return Err(ApiError::method_not_allowed(format!(
                        "the server does not allow this method on the requested resource ({} {path})",
                        request.method()
                    )));
                }
                self.discovery(target, format)
            }
            Target::Resource(resource) => {
                let serving = self.resource(request, resource, query, format);
                requester.scope(serving).await
            }
        }
    }

    async fn health(&self, path: &str, query: Option<&str>) -> Response<Body> {
        let verbose = query.is_some_and(|q| {
            q.split('&')
                .any(|p| p == "verbose" || p.starts_with("verbose="))
        });
        let store = (self.health)().await;
        let name = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("healthz");
        let checks = [
            ("ping", Ok(())),
            ("etcd", store.clone()),
            ("informer-sync", Ok(())),
        ];
        let failed = checks.iter().any(|(_, r)| r.is_err());
        let mut text = String::new();
        if verbose || failed {
            for (check, result) in &checks {
                match result {
                    Ok(()) => text.push_str(&format!("[+]{check} ok\n")),
                    Err(e) => text.push_str(&format!("[-]{check} failed: {e}\n")),
                }
            }
            text.push_str(&format!(
                "{name} check {}\n",
                if failed { "failed" } else { "passed" }
            ));
        } else {
            text.push_str("ok");
        }
        respond(
            if failed { 500 } else { 200 },
            "text/plain; charset=utf-8",
            text,
        )
    }

    fn discovery(&self, target: Target, format: Format) -> ApiResult<Response<Body>> {
        let catalog = &self.registry.catalog;
        let value = match (&target, format) {
            (Target::LegacyVersions | Target::Groups, Format::Discovery(version)) => {
                let legacy = target == Target::LegacyVersions;
                let api_version = format!("apidiscovery.k8s.io/{version}");
                let value = discovery::aggregated(catalog, legacy, &api_version);
                let content_type = format!(
                    "application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
                );
                return Ok(respond(
                    200,
                    &content_type,
                    serde_json::to_vec(&value).expect("JSON serialises"),
                ));
            }
            (Target::LegacyVersions, _) => discovery::legacy_versions(&self.info.address),
            (Target::Groups, _) => discovery::group_list(catalog),
            (Target::Group(g), _) => discovery::group(catalog, g).ok_or_else(ApiError::no_route)?,
            (Target::ResourceList { group, version }, _) => {
                discovery::resource_list(catalog, group, version).ok_or_else(ApiError::no_route)?
            }
            (Target::Resource(_), _) => return Err(ApiError::no_route()),
        };
        Ok(encode(200, format, &value))
    }

    async fn resource(
        &self,
        request: Request<RequestBody>,
        path: ResourcePath,
        query: Query,
        format: Format,
    ) -> ApiResult<Response<Body>> {
        let registry = &self.registry;
        let def = registry
            .catalog
            .lookup(&path.group, &path.version, &path.resource)
            .ok_or_else(ApiError::no_route)?;
        if path.namespace.is_some() && !def.namespaced {
            return Err(ApiError::no_route());
        }
        let subresource = match path.subresource.as_deref() {
            None => None,
            Some(name) => Some(
                Subresource::from_name(name)
                    .filter(|s| def.has(*s))
                    .ok_or_else(ApiError::no_route)?,
            ),
        };
        let scope = Scope {
            def: def.clone(),
            namespace: path.namespace.clone(),
        };
        let method = request.method().clone();
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let name = path.name.clone();
        if path.legacy_watch && (method != Method::GET || name.is_some()) {
            return Err(ApiError::no_route());
        }
        if let Some(
            sub @ (Subresource::Log
            | Subresource::Exec
            | Subresource::Attach
            | Subresource::PortForward),
        ) = subresource
        {
            let name = name.ok_or_else(ApiError::no_route)?;
            return self
                .node_proxy
                .serve(registry, request, &scope, &name, sub)
                .await;
        }
        if let Some(answer) = def.virtual_create {
            // Create-only resources (access reviews): answered, never stored.
            if method != Method::POST || name.is_some() || subresource.is_some() {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource ({method} {})",
                    def.plural
                )));
            }
            let body = read_body(request).await?;
            let obj = decode_body(&body, &content_type)?;
            let answered = answer(scope.namespace.as_deref(), obj)?;
            return self.value_response(201, &def, answered, format);
        }
        match (method, name, subresource) {
            (Method::GET, None, None) if query.watch || path.legacy_watch => {
                self.watch(scope, &query, format).await
            }
            (Method::GET, None, None) => {
                let list = registry.list(&scope, &query).await?;
                self.list_response(&def, list, format)
            }
            (Method::GET, Some(name), None | Some(Subresource::Status)) => {
                let bytes = registry.get(&scope, &name, &query).await?;
                self.object_response(200, &def, bytes, format)
            }
            (Method::GET, Some(name), Some(Subresource::Scale)) => {
                let bytes = registry.get(&scope, &name, &query).await?;
                let obj: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                Ok(encode(200, format, &registry.scale_of(&def, &obj)))
            }
            (Method::POST, None, None) => {
                let body = read_body(request).await?;
                let obj = decode_body(&body, &content_type)?;
                let result = registry
                    .create_with_body(&scope, obj, json_body(&body, &content_type), &query)
                    .await?;
                let response = self.value_response(201, &def, result.object, format);
                response.map(|r| with_warnings(r, &result.warnings))
            }
            (
                Method::PUT,
                Some(name),
                sub @ (None | Some(Subresource::Status) | Some(Subresource::Finalize)),
            ) => {
                let body = read_body(request).await?;
                let obj = decode_body(&body, &content_type)?;
                let raw = json_body(&body, &content_type);
                let result = registry
                    .update_with_body(&scope, &name, sub, obj, raw, &query)
                    .await?;
                let response = self.value_response(
                    if result.created { 201 } else { 200 },
                    &def,
                    result.object,
                    format,
                );
                response.map(|r| with_warnings(r, &result.warnings))
            }
            (Method::PUT, Some(name), Some(Subresource::Scale)) => {
                let body = read_body(request).await?;
                let scale = decode_body(&body, &content_type)?;
                let result = registry.update_scale(&scope, &name, scale, &query).await?;
                Ok(encode(200, format, &result))
            }
            (
                Method::PATCH,
                Some(name),
                sub @ (None | Some(Subresource::Status) | Some(Subresource::Scale)),
            ) => {
                let body = read_body(request).await?;
                if crate::apply::is_apply(&content_type) {
                    let (object, created) =
                        crate::apply::apply(registry, &scope, &name, sub, &body, &query).await?;
                    return self.value_response(
                        if created { 201 } else { 200 },
                        &def,
                        object,
                        format,
                    );
                }
                let result =
                    patch::patch(registry, &scope, &name, sub, &content_type, &body, &query)
                        .await?;
                if sub == Some(Subresource::Scale) {
                    return Ok(encode(200, format, &registry.scale_of(&def, &result)));
                }
                self.value_response(200, &def, result, format)
            }
            (
                Method::POST,
                Some(name),
                Some(sub @ (Subresource::Binding | Subresource::Eviction)),
            ) => {
                let body = read_body(request).await?;
                let obj = decode_body(&body, &content_type)?;
                let status = if sub == Subresource::Binding {
                    registry.bind_pod(&scope, &name, obj).await?
                } else {
                    registry.evict_pod(&scope, &name, obj).await?
                };
                Ok(encode(201, format, &status))
            }
            (Method::DELETE, Some(name), None) => {
                let body = read_body(request).await?;
                let options = DeleteOptions::from_request(&body, &content_type, &query)?;
                let deleted = registry.delete(&scope, &name, &options).await?;
                self.value_response(200, &def, deleted, format)
            }
            (Method::DELETE, None, None) => {
                let body = read_body(request).await?;
                let options = DeleteOptions::from_request(&body, &content_type, &query)?;
                let list = registry.delete_collection(&scope, &query, &options).await?;
                self.list_response(&def, list, format)
            }
            (method, name, sub) => Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} {}{}{})",
                def.plural,
                name.map(|n| format!("/{n}")).unwrap_or_default(),
                sub.map(|s| format!("/{}", s.name())).unwrap_or_default(),
            ))),
        }
    }

    fn object_response(
        &self,
        status: u16,
        def: &ResourceDef,
        bytes: Bytes,
        format: Format,
    ) -> ApiResult<Response<Body>> {
        match format {
            Format::Json => Ok(respond(status, JSON, bytes)),
            _ => {
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                self.value_response(status, def, value, format)
            }
        }
    }

    fn value_response(
        &self,
        status: u16,
        def: &ResourceDef,
        value: Value,
        format: Format,
    ) -> ApiResult<Response<Body>> {
        match format {
            Format::Metadata => Ok(encode(
                status,
                Format::Json,
                &table::partial_metadata(&value),
            )),
            Format::Table(include) => {
                let revision = value
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let t = table::table(
                    def,
                    &[value],
                    json!({ "resourceVersion": revision }),
                    include,
                    true,
                );
                Ok(respond(
                    status,
                    TABLE_TYPE,
                    serde_json::to_vec(&t).expect("JSON serialises"),
                ))
            }
            _ => Ok(encode(status, format, &value)),
        }
    }

    fn list_response(
        &self,
        def: &ResourceDef,
        list: ListResult,
        format: Format,
    ) -> ApiResult<Response<Body>> {
        let mut list_meta = json!({ "resourceVersion": list.revision.to_string() });
        if let Some(token) = &list.continue_token {
            list_meta["continue"] = json!(token);
        }
        if let Some(remaining) = list.remaining {
            list_meta["remainingItemCount"] = json!(remaining);
        }
        match format {
            Format::Json => {
                // The items are ready JSON: splice them rather than re-encode a thousand objects.
                let head = json!({ "kind": def.list_kind, "apiVersion": def.api_version(), "metadata": list_meta });
                Ok(respond(200, JSON, splice_list(&head, list.items.iter())))
            }
            Format::Metadata => {
                let head = json!({ "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta });
                let items = list.items.iter().map(|item| {
                    crate::object::partial_metadata_bytes(item).unwrap_or_else(|| {
                        let value: Value = serde_json::from_slice(item).unwrap_or(Value::Null);
                        serde_json::to_vec(&table::partial_metadata(&value))
                            .expect("JSON serialises")
                    })
                });
                Ok(respond(200, JSON, splice_list(&head, items)))
            }
            Format::Table(include) => {
                let objects = parse_items(&list.items)?;
                let t = table::table(def, &objects, list_meta, include, true);
                Ok(respond(
                    200,
                    TABLE_TYPE,
                    serde_json::to_vec(&t).expect("JSON serialises"),
                ))
            }
            _ => {
                let objects = parse_items(&list.items)?;
                let value = json!({ "kind": def.list_kind, "apiVersion": def.api_version(), "metadata": list_meta, "items": objects });
                Ok(encode(200, format, &value))
            }
        }
    }

    async fn watch(
        &self,
        scope: Scope,
        query: &Query,
        format: Format,
    ) -> ApiResult<Response<Body>> {
        let (watch_format, content_type) = match format {
            Format::Table(include) => (WatchFormat::Table(include), TABLE_TYPE),
            Format::Json => (WatchFormat::Json, JSON),
            Format::Metadata => (WatchFormat::Metadata, JSON),
            _ => return Err(ApiError::not_acceptable("watch events are served as JSON")),
        };
        let events = watch::start(self.registry.clone(), scope, query, watch_format).await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(events)
            .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
        let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Ok(response)
    }
}

/// Whether a path is a health probe (`/healthz`, `/livez`, `/readyz` and their checks).
fn is_health_path(path: &str) -> bool {
    ["/healthz", "/livez", "/readyz"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// `(namespace, name)` of a `POST …/namespaces/NS/serviceaccounts/NAME/token` (TokenRequest).
fn token_request_target<B>(request: &Request<B>) -> Option<(String, String)> {
    if request.method() != Method::POST {
        return None;
    }
    match parse_path(request.uri().path()).ok()? {
        Target::Resource(r)
            if r.group.is_empty()
                && r.resource == "serviceaccounts"
                && r.subresource.as_deref() == Some("token") =>
        {
            Some((r.namespace?, r.name?))
        }
        _ => None,
    }
}

/// A list object from its head (kind, apiVersion, metadata) and items already encoded.
fn splice_list<T: AsRef<[u8]>>(head: &Value, items: impl Iterator<Item = T>) -> Vec<u8> {
    let head = serde_json::to_vec(head).expect("JSON serialises");
    let mut out = Vec::with_capacity(head.len() + 16);
    out.extend_from_slice(&head[..head.len() - 1]);
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_ref());
    }
    out.extend_from_slice(b"]}");
    out
}

fn parse_items(items: &[Bytes]) -> ApiResult<Vec<Value>> {
    items
        .iter()
        .map(|i| serde_json::from_slice(i).map_err(|e| ApiError::internal(e.to_string())))
        .collect()
}

/// The body as JSON text, when it is JSON: field validation scans it for repeated keys.
fn json_body<'a>(body: &'a [u8], content_type: &str) -> Option<&'a [u8]> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    (media.is_empty() || media.eq_ignore_ascii_case(JSON)).then_some(body)
}

/// Adds one `Warning` header per text (field validation in `Warn` mode).
fn with_warnings(mut response: Response<Body>, warnings: &[String]) -> Response<Body> {
    for text in warnings {
        if let Ok(value) = HeaderValue::from_str(&crate::openapi::warning_header(text)) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// Reads a request body, refusing more than upstream's 3 MiB.
async fn read_body(request: Request<RequestBody>) -> ApiResult<Bytes> {
    let mut body = request.into_body();
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("error reading request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= MAX_BODY {
            collected.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT {
            // Too much to read just to refuse it; the connection closes after the answer.
            break;
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::too_large());
    }
    Ok(collected.freeze())
}

/// What `/version` answers: the Kubernetes API level served, and Visor's own version.
fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": format!("v1.32.0+visor-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_client_order() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(kubectl_get), false, IncludeObject::Metadata).unwrap(),
            Format::Table(IncludeObject::Metadata)
        );
        let discovery = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(
            negotiate(Some(discovery), true, IncludeObject::Metadata).unwrap(),
            Format::Discovery("v2")
        );
        assert_eq!(
            negotiate(Some(discovery), false, IncludeObject::Metadata).unwrap(),
            Format::Json
        );
        assert_eq!(
            negotiate(None, false, IncludeObject::Metadata).unwrap(),
            Format::Json
        );
        assert_eq!(
            negotiate(
                Some("application/vnd.kubernetes.protobuf, */*"),
                false,
                IncludeObject::Metadata
            )
            .unwrap(),
            Format::Json
        );
        assert_eq!(
            negotiate(
                Some("application/vnd.kubernetes.protobuf"),
                false,
                IncludeObject::Metadata
            )
            .unwrap_err()
            .code,
            406
        );
    }
}
