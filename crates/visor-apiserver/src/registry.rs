//! The generic registry: every verb, written once for every kind.
//!
//! A request arrives here with its [`ResourceDef`] resolved. Writes go through the same steps
//! for all kinds — decode, prepare (system metadata), default, validate, admission (namespace
//! lifecycle), compare-and-swap write — and reads are served from the watch cache after it has
//! caught up with the store, so a read always sees every acknowledged write.
//!
//! The few behaviours upstream hard-codes for particular kinds live in small, named functions
//! here: graceful pod deletion, namespace termination, the scale view.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use visor_store::cache::WatchCache;
use visor_store::{DynStore, KeyValue, RangeRequest, Revision, StoreError, TxnWrite};

use crate::admission::quota::Charge;
use crate::errors::{ApiError, ApiResult, qualified};
use crate::kinds::{Catalog, FieldError, ResourceDef, Subresource, validation};
use crate::object::{self, CachedObject, meta, meta_mut};
use crate::openapi;
use crate::request::Query;
use crate::selectors::{FieldSelector, LabelSelector, parse_field_selector, parse_label_selector};
use crate::ssa;

mod pods;

/// How long a read waits for the watch cache to catch up before giving up.
const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an unconditional update retries after losing a compare-and-swap race.
const UPDATE_RETRIES: usize = 16;

/// The server's shared state for serving resources.
pub struct Registry {
    pub catalog: Arc<Catalog>,
    pub store: DynStore,
    pub cache: Arc<WatchCache<CachedObject>>,
}

/// The scope of a request: which resource, which namespace, which object.
#[derive(Clone)]
pub struct Scope {
    pub def: Arc<ResourceDef>,
    pub namespace: Option<String>,
}

impl Scope {
    fn group(&self) -> &str {
        &self.def.group
    }

    fn resource(&self) -> &str {
        &self.def.plural
    }

    fn not_found(&self, name: &str) -> ApiError {
        ApiError::not_found(self.group(), self.resource(), name)
    }
}

/// A list's items and the revision it reflects.
pub struct ListResult {
    pub items: Vec<Bytes>,
    pub revision: Revision,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// The result of a write: the object as stored and whether it was created.
pub struct WriteResult {
    pub object: Value,
    pub created: bool,
    /// Texts for `Warning` response headers (field validation in `Warn` mode).
    pub warnings: Vec<String>,
}

/// How one attempt of a read-modify-write ended.
enum Step {
    /// Stored; the object as written.
    Written(Value),
    /// Decided without a write (no change, or a dry run); the object as it would be.
    Unwritten(Value),
    /// Lost a compare-and-swap race; the key's present value, as the store answered it.
    Raced(Option<KeyValue>),
}

impl Step {
    /// The attempt's outcome if it stands; otherwise where the next attempt reads the object:
    /// after a lost race, the present value the store answered with; when a cached copy
    /// decided without a write, the store.
    fn settle(step: ApiResult<Step>, cached: bool) -> ControlFlow<ApiResult<Value>, ReadFrom> {
        match step {
            Ok(Step::Written(object)) => ControlFlow::Break(Ok(object)),
            Ok(Step::Unwritten(object)) if !cached => ControlFlow::Break(Ok(object)),
            Err(e) if !cached => ControlFlow::Break(Err(e)),
            Ok(Step::Raced(Some(present))) => ControlFlow::Continue(ReadFrom::Known(present)),
            _ => ControlFlow::Continue(ReadFrom::Store),
        }
    }
}

/// Where a write's attempt reads the object it starts from.
enum ReadFrom {
    /// The watch cache's copy when it has one (a first attempt, which saves a store read).
    Cache,
    Store,
    /// The key's value as a failed compare-and-swap returned it: as current as a read.
    Known(KeyValue),
}

impl ReadFrom {
    /// A first attempt reads the cache, but a dry run, which writes nothing to catch a stale
    /// copy, reads the store.
    fn first(dry_run: bool) -> ReadFrom {
        if dry_run {
            ReadFrom::Store
        } else {
            ReadFrom::Cache
        }
    }
}

/// Selectors of a list or watch, parsed and checked against the kind's selectable fields.
#[derive(Clone, Default)]
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn parse(def: &ResourceDef, query: &Query) -> ApiResult<Self> {
        let labels = parse_label_selector(query.label_selector.as_deref().unwrap_or(""))?;
        let fields = parse_field_selector(query.field_selector.as_deref().unwrap_or(""))?;
        for r in &fields.requirements {
            let known = r.field == "metadata.name"
                || r.field == "metadata.namespace"
                || def.selectable_fields.contains(&r.field);
            if !known {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {}",
                    r.field
                )));
            }
        }
        Ok(Filter { labels, fields })
    }

    pub fn matches(&self, obj: &CachedObject) -> bool {
        self.labels.matches(|k| obj.label(k)) && self.fields.matches(|f| obj.field(f))
    }
}

/// What a continue token remembers: the revision of the first page and the last key served.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

fn encode_continue(revision: Revision, last_key: &str) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv: revision,
        start: last_key.to_string(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&token).expect("token serialises"))
}

fn decode_continue(token: &str) -> ApiResult<ContinueToken> {
    let invalid =
        || ApiError::bad_request("continue key is not valid: illegal base64 data or JSON");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let token: ContinueToken = serde_json::from_slice(&raw).map_err(|_| invalid())?;
    if token.v != "meta.k8s.io/v1" || token.rv <= 0 {
        return Err(invalid());
    }
    Ok(token)
}

fn parse_revision(value: &str) -> ApiResult<Revision> {
    value
        .parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid resource version {value:?}: must be a non-negative integer"
            ))
        })
}

/// Reads a request body as a JSON object: JSON, or YAML when the content type says so.
pub fn decode_body(body: &[u8], content_type: &str) -> ApiResult<Value> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let value: Value = match media.as_str() {
        "application/json" | "" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("error decoding request body: invalid JSON: {e}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(body).map_err(|_| {
                ApiError::bad_request("error decoding request body: YAML is not valid UTF-8")
            })?;
            serde_saphyr::from_str(text).map_err(|e| {
                ApiError::bad_request(format!("error decoding request body: invalid YAML: {e}"))
            })?
        }
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?,
        _ => return Err(ApiError::unsupported_media_type(content_type)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "error decoding request body: the body must be a JSON object",
        ));
    }
    Ok(value)
}

impl Registry {
    /// Waits until the cache reflects every acknowledged write.
    async fn sync(&self) -> ApiResult<Revision> {
        self.cache
            .sync(CACHE_SYNC_TIMEOUT)
            .await
            .map_err(|e| ApiError::from_store(e, "", "", ""))
    }

    /// Brings the cache at least to `revision`, or to the present when `None`.
    async fn wait_fresh(&self, min_revision: Option<Revision>) -> ApiResult<()> {
        match min_revision {
            Some(0) => Ok(()),
            Some(r) => {
                let current = self
                    .store
                    .current_revision()
                    .await
                    .map_err(|e| ApiError::from_store(e, "", "", ""))?;
                if r > current {
                    return Err(ApiError::timeout(format!(
                        "Too large resource version: {r}, current: {current}"
                    )));
                }
                self.cache
                    .wait_for(r, CACHE_SYNC_TIMEOUT)
                    .await
                    .map_err(|e| ApiError::from_store(e, "", "", ""))
            }
            None => self.sync().await.map(|_| ()),
        }
    }

    /// Converts a stored object into the form of the resource being served.
    pub(crate) fn present(&self, def: &ResourceDef, mut value: Value) -> Value {
        if def.custom.is_some() {
            // Custom resources convert between versions by their apiVersion alone.
            value["apiVersion"] = json!(def.api_version());
        }
        match &def.shared_storage {
            Some(shared) => (shared.from_storage)(value),
            None => value,
        }
    }

    /// The result of an update: the object in the served form.
    fn updated(&self, def: &ResourceDef, object: Value) -> WriteResult {
        WriteResult {
            object: self.present(def, object),
            created: false,
            warnings: Vec::new(),
        }
    }

    fn present_bytes(&self, def: &ResourceDef, cached: &CachedObject) -> Bytes {
        let stored_as_served = match (&def.shared_storage, &def.custom) {
            (Some(_), _) => false,
            (None, Some(custom)) => custom.storage_version == def.version,
            (None, None) => true,
        };
        if stored_as_served {
            return cached.json.clone();
        }
        let converted = self.present(def, cached.value());
        Bytes::from(serde_json::to_vec(&converted).expect("JSON serialises"))
    }

    /// Converts an object in the served form into the stored form.
    pub(crate) fn to_storage(&self, def: &ResourceDef, mut obj: Value) -> Value {
        if let Some(custom) = &def.custom {
            obj["apiVersion"] = json!(custom.storage_api_version(&def.group));
        }
        match &def.shared_storage {
            Some(shared) => (shared.to_storage)(obj),
            None => obj,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Reads

    pub async fn get(&self, scope: &Scope, name: &str, query: &Query) -> ApiResult<Bytes> {
        let min_revision = query
            .resource_version
            .as_deref()
            .map(parse_revision)
            .transpose()?;
        self.wait_fresh(min_revision).await?;
        let key = scope.def.key(scope.namespace.as_deref(), name);
        let cached = self.cache.get(&key).ok_or_else(|| scope.not_found(name))?;
        Ok(self.present_bytes(&scope.def, &cached))
    }

    /// Reads one object as a value (for writes, which need the current state).
    async fn get_current(&self, scope: &Scope, name: &str) -> ApiResult<(Value, Revision)> {
        let key = scope.def.key(scope.namespace.as_deref(), name);
        let (kv, _) = self
            .store
            .get(&key, None)
            .await
            .map_err(|e| ApiError::from_store(e, scope.group(), scope.resource(), name))?;
        let kv = kv.ok_or_else(|| scope.not_found(name))?;
        stored_value(&kv)
    }

    /// The object a write starts from, its revision, and whether it is the watch cache's copy.
    ///
    /// Like upstream's cacher, a write's first attempt saves the store read: its
    /// compare-and-swap on the copy's revision fails if the copy was stale. Whatever a stale
    /// copy could decide without writing (an error, a no-op, a dry run) the caller decides
    /// again from the store.
    async fn current_for_write(
        &self,
        scope: &Scope,
        name: &str,
        from: ReadFrom,
    ) -> ApiResult<(Value, Revision, bool)> {
        match from {
            ReadFrom::Cache => {
                let key = scope.def.key(scope.namespace.as_deref(), name);
                if let Some(copy) = self.cache.get(&key) {
                    let value = copy.value();
                    if value.is_object() {
                        return Ok((value, copy.revision, true));
                    }
                }
            }
            ReadFrom::Known(kv) => {
                let (value, revision) = stored_value(&kv)?;
                return Ok((value, revision, false));
            }
            ReadFrom::Store => {}
        }
        let (value, revision) = self.get_current(scope, name).await?;
        Ok((value, revision, false))
    }

    pub async fn list(&self, scope: &Scope, query: &Query) -> ApiResult<ListResult> {
        let filter = Filter::parse(&scope.def, query)?;
        let prefix = scope.def.namespace_prefix(scope.namespace.as_deref());
        if let Some(token) = &query.continue_token {
            let token = decode_continue(token)?;
            return self
                .list_from_store(
                    scope,
                    &prefix,
                    &filter,
                    token.rv,
                    Some(&token.start),
                    query.limit,
                )
                .await;
        }
        let exact = query.resource_version_match.as_deref() == Some("Exact");
        match (
            query.resource_version_match.as_deref(),
            query.resource_version.as_deref(),
        ) {
            (Some("Exact" | "NotOlderThan"), None) => {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            (Some(m), _) if m != "Exact" && m != "NotOlderThan" => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
            _ => {}
        }
        let min_revision = query
            .resource_version
            .as_deref()
            .map(parse_revision)
            .transpose()?;
        if exact {
            let revision = min_revision.unwrap_or_default();
            return self
                .list_from_store(scope, &prefix, &filter, revision, None, query.limit)
                .await;
        }
        self.wait_fresh(min_revision).await?;
        let (entries, revision) = self.cache.list(&prefix);
        let mut items = Vec::new();
        let mut continue_token = None;
        let mut remaining = None;
        let mut matched = entries.iter().filter(|(_, obj)| filter.matches(obj));
        for (key, obj) in matched.by_ref() {
            items.push(self.present_bytes(&scope.def, obj));
            if query.limit.is_some_and(|limit| items.len() >= limit) {
                continue_token = Some(encode_continue(revision, key));
                break;
            }
        }
        if continue_token.is_some() {
            let left = matched.count();
            if left == 0 {
                continue_token = None;
            } else if filter.labels.is_empty() && filter.fields.is_empty() {
                remaining = Some(left);
            }
        }
        Ok(ListResult {
            items,
            revision,
            continue_token,
            remaining,
        })
    }

    /// A list read from the store at a fixed revision: continuation pages and exact reads.
    async fn list_from_store(
        &self,
        scope: &Scope,
        prefix: &str,
        filter: &Filter,
        revision: Revision,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> ApiResult<ListResult> {
        let mut items = Vec::new();
        let mut start = start_after.map(str::to_string);
        let batch = limit.map(|l| l.max(100)).unwrap_or(0);
        loop {
            let result = self
                .store
                .range(RangeRequest { prefix, start_after: start.as_deref(), limit: batch, revision: Some(revision) })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if start_after.is_some() => ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    e => ApiError::from_store(e, scope.group(), scope.resource(), ""),
                })?;
            let count = result.kvs.len();
            for kv in &result.kvs {
                let Some(obj) = object::decode_for_cache(&self.catalog, kv) else {
                    continue;
                };
                if !filter.matches(&obj) {
                    continue;
                }
                items.push(self.present_bytes(&scope.def, &obj));
                if limit.is_some_and(|l| items.len() >= l) {
                    let more = result.more || kv.key != result.kvs[count - 1].key;
                    let continue_token = more.then(|| encode_continue(revision, &kv.key));
                    return Ok(ListResult {
                        items,
                        revision,
                        continue_token,
                        remaining: None,
                    });
                }
            }
            if !result.more || count == 0 {
                return Ok(ListResult {
                    items,
                    revision,
                    continue_token: None,
                    remaining: None,
                });
            }
            start = result.kvs.last().map(|kv| kv.key.clone());
        }
    }

    // ---------------------------------------------------------------------------------------
    // Writes

    /// Checks a body's `apiVersion` and `kind` against the endpoint, filling them if absent.
    fn check_type(&self, def: &ResourceDef, obj: &mut Value) -> ApiResult<()> {
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if api_version.is_empty() && kind.is_empty() {
            obj["apiVersion"] = json!(def.api_version());
            obj["kind"] = json!(def.kind);
            return Ok(());
        }
        if kind.is_empty() {
            return Err(ApiError::bad_request(
                "Object 'Kind' is missing in the request body",
            ));
        }
        if api_version.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Object 'apiVersion' is missing in the request body of kind {kind:?}"
            )));
        }
        if api_version != def.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                def.api_version()
            )));
        }
        if kind != def.kind {
            return Err(ApiError::bad_request(format!(
                "no kind {kind:?} is registered for version {api_version:?} at this endpoint (expected {:?})",
                def.kind
            )));
        }
        Ok(())
    }

    /// Decodes, defaults and validates an object; `old` is the current object on updates.
    fn admit(&self, scope: &Scope, obj: &mut Value, old: Option<&Value>) -> ApiResult<()> {
        let def = &scope.def;
        if let Some(check) = def.decode_check {
            check(obj).map_err(|e| {
                ApiError::bad_request(format!("error decoding {} body: {e}", def.kind))
            })?;
        }
        match &def.custom {
            Some(custom) => custom.schema.prune(obj),
            None => openapi::prune_fields(&self.catalog, def, obj),
        }
        if let Some(defaulter) = def.defaulter {
            defaulter(obj);
        }
        if let Some(custom) = &def.custom {
            custom.schema.apply_defaults(obj);
        }
        let mut errors = match meta(obj) {
            Some(_) => validation::validate_object_meta_with(
                &obj["metadata"],
                def.namespaced,
                def.name_rule(),
            ),
            None => vec![FieldError::required("metadata", "")],
        };
        if let Some(validator) = def.validator {
            errors.extend(validator(obj, old));
        }
        // RBAC escalation prevention for roles and bindings (no-op for other kinds).
        crate::rbac::escalation::check(scope, obj, old)?;
        if let Some(custom) = &def.custom {
            errors.extend(custom.schema.validate(obj));
        }
        if !errors.is_empty() {
            let name = object::name(obj).to_string();
            return Err(ApiError::invalid(
                def.group.as_str(),
                &def.kind,
                &name,
                &errors,
            ));
        }
        Ok(())
    }

    /// The namespace lifecycle admission check: the namespace exists and is not terminating.
    async fn check_namespace(&self, scope: &Scope, name: &str) -> ApiResult<()> {
        let Some(ns) = scope.namespace.as_deref().filter(|_| scope.def.namespaced) else {
            return Ok(());
        };
        let key = format!("/registry/core/namespaces/{ns}");
        let cached = match self.cache.get(&key) {
            Some(c) => c,
            None => {
                // The namespace may have been created a moment ago; catch up before refusing.
                self.sync().await?;
                self.cache
                    .get(&key)
                    .ok_or_else(|| ApiError::not_found("", "namespaces", ns))?
            }
        };
        if cached.field("status.phase") == Some("Terminating") {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                qualified(scope.group(), scope.resource()),
            ))
            .with_namespace_terminating());
        }
        Ok(())
    }

    pub async fn create(&self, scope: &Scope, obj: Value, query: &Query) -> ApiResult<WriteResult> {
        self.create_with_body(scope, obj, None, query).await
    }

    /// [`Registry::create`], given also the request body as sent (JSON), in which field
    /// validation looks for repeated keys.
    pub async fn create_with_body(
        &self,
        scope: &Scope,
        mut obj: Value,
        raw_body: Option<&[u8]>,
        query: &Query,
    ) -> ApiResult<WriteResult> {
        let def = scope.def.clone();
        self.check_type(&def, &mut obj)?;
        // Field validation (`fieldValidation`): see `openapi::validate_fields`.
        let mode =
            openapi::FieldValidation::parse(query.field_validation.as_deref(), "CreateOptions")?;
        let warnings = openapi::validate_fields(&self.catalog, &def, raw_body, &obj, mode)?;
        self.create_checked(scope, obj, query)
            .await
            .map(|r| WriteResult { warnings, ..r })
    }

    async fn create_checked(
        &self,
        scope: &Scope,
        mut obj: Value,
        query: &Query,
    ) -> ApiResult<WriteResult> {
        let def = scope.def.clone();
        let body_ns = object::namespace(&obj).to_string();
        match (&scope.namespace, def.namespaced) {
            (Some(ns), true) => {
                if !body_ns.is_empty() && body_ns != *ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                meta_mut(&mut obj).insert("namespace".into(), json!(ns));
            }
            (None, true) => {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource: {} are namespaced; create them in a namespace",
                    def.plural
                )));
            }
            (_, false) => {
                meta_mut(&mut obj).remove("namespace");
            }
        }
        let generate = object::name(&obj).is_empty()
            && object::meta_str(&obj, "generateName").is_some_and(|g| !g.is_empty());
        prepare_create(&def, &mut obj);
        if generate {
            let prefix = object::meta_str(&obj, "generateName")
                .unwrap_or_default()
                .to_string();
            meta_mut(&mut obj).insert("name".into(), json!(generated_name(&prefix)));
        }
        crate::admission::mutate(self, scope, &mut obj, None).await?;
        if def.kind == "Pod" && def.group.is_empty() {
            self.admit_pod_priority(&mut obj)?;
        }
        self.admit(scope, &mut obj, None)?;
        self.check_namespace(scope, object::name(&obj)).await?;
        let mut charge = crate::admission::validate(self, scope, &obj, None, query.dry_run).await?;
        if !query.apply {
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("managedFields");
            }
            let manager = query.manager();
            let api_version = def.api_version();
            let now = object::now_rfc3339();
            let ctx = ssa::WriteContext {
                manager: &manager,
                api_version: &api_version,
                subresource: "",
                now: &now,
            };
            ssa::track_update(
                None,
                &mut obj,
                &ctx,
                ssa::types::for_resource(&def).as_ref(),
            );
        }
        obj = self.to_storage(&def, obj);
        if query.dry_run {
            return Ok(WriteResult {
                object: self.present(&def, obj),
                created: true,
                warnings: Vec::new(),
            });
        }
        let mut attempts = 0;
        let revision = loop {
            // A retried generated name changes the key.
            let key = def.key(scope.namespace.as_deref(), object::name(&obj));
            let write = TxnWrite::Create {
                key,
                value: object::to_storage_bytes(&obj),
            };
            match self.write_charged(write, charge).await? {
                Ok(revision) => break revision,
                // A generated name collided: upstream retries with a fresh one.
                Err((StoreError::AlreadyExists(_), unspent)) if generate && attempts < 8 => {
                    charge = unspent;
                    attempts += 1;
                    let prefix = object::meta_str(&obj, "generateName")
                        .unwrap_or_default()
                        .to_string();
                    meta_mut(&mut obj).insert("name".into(), json!(generated_name(&prefix)));
                }
                Err((e, _)) => {
                    return Err(ApiError::from_store(
                        e,
                        scope.group(),
                        scope.resource(),
                        object::name(&obj),
                    ));
                }
            }
        };
        object::set_resource_version(&mut obj, revision);
        Ok(WriteResult {
            object: self.present(&def, obj),
            created: true,
            warnings: Vec::new(),
        })
    }

    /// Stores an object's create or update, with its quota charge if it has one (see
    /// [`crate::admission::quota::write`]). The store's errors about the object itself come
    /// back with the charge, which still holds for another attempt at the same write.
    async fn write_charged(
        &self,
        write: TxnWrite,
        charge: Option<Charge>,
    ) -> ApiResult<Result<Revision, (StoreError, Option<Charge>)>> {
        let Some(charge) = charge else {
            let written = match write {
                TxnWrite::Create { key, value } => self.store.create(&key, value).await,
                TxnWrite::Update {
                    key,
                    value,
                    expected,
                } => self.store.update(&key, value, expected).await,
            };
            return Ok(written.map_err(|e| (e, None)));
        };
        let written = crate::admission::quota::write(self, &charge, write).await?;
        Ok(written.map_err(|e| (e, Some(charge))))
    }

    /// Replaces an object (`subresource` None), or its status, or a namespace's finalizers.
    pub async fn update(
        &self,
        scope: &Scope,
        name: &str,
        subresource: Option<Subresource>,
        obj: Value,
        query: &Query,
    ) -> ApiResult<WriteResult> {
        self.update_with_body(scope, name, subresource, obj, None, query)
            .await
    }

    /// [`Registry::update`], given also the request body as sent (JSON), in which field
    /// validation looks for repeated keys.
    pub async fn update_with_body(
        &self,
        scope: &Scope,
        name: &str,
        subresource: Option<Subresource>,
        mut obj: Value,
        raw_body: Option<&[u8]>,
        query: &Query,
    ) -> ApiResult<WriteResult> {
        let def = scope.def.clone();
        self.check_type(&def, &mut obj)?;
        // Field validation (`fieldValidation`): see `openapi::validate_fields`.
        let mode =
            openapi::FieldValidation::parse(query.field_validation.as_deref(), "UpdateOptions")?;
        let warnings = openapi::validate_fields(&self.catalog, &def, raw_body, &obj, mode)?;
        self.update_checked(scope, name, subresource, obj, query)
            .await
            .map(|r| WriteResult { warnings, ..r })
    }

    async fn update_checked(
        &self,
        scope: &Scope,
        name: &str,
        subresource: Option<Subresource>,
        mut obj: Value,
        query: &Query,
    ) -> ApiResult<WriteResult> {
        let def = scope.def.clone();
        obj = self.to_storage(&def, obj);
        let body_name = object::name(&obj).to_string();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let (Some(ns), true) = (&scope.namespace, def.namespaced) {
            let body_ns = object::namespace(&obj);
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let precondition = object::meta_str(&obj, "resourceVersion")
            .filter(|rv| !rv.is_empty())
            .map(parse_revision)
            .transpose()?;
        let new = obj;
        let writer = Writer::new(query, subresource);
        self.guaranteed_update_by(
            scope,
            name,
            precondition,
            query.dry_run,
            Some(&writer),
            move |current| {
                let mut next = new.clone();
                merge_for_update(&def, subresource, current, &mut next);
                Ok(next)
            },
        )
        .await
    }

    /// Reads the current object, applies `mutate`, and writes it back with compare-and-swap,
    /// retrying on races unless the caller gave a resource version precondition.
    ///
    /// Guarantees: `mutate` sees the latest stored object; a write that changes nothing is not
    /// made (the resource version stays); an object that is being deleted and has lost its
    /// last finalizer is removed.
    pub async fn guaranteed_update<F>(
        &self,
        scope: &Scope,
        name: &str,
        precondition: Option<Revision>,
        dry_run: bool,
        mutate: F,
    ) -> ApiResult<WriteResult>
    where
        F: Fn(&Value) -> ApiResult<Value>,
    {
        self.guaranteed_update_by(scope, name, precondition, dry_run, None, mutate)
            .await
    }

    /// [`Registry::guaranteed_update`] on behalf of a field manager, whose changes are
    /// recorded in `managedFields`. Without one, the object's `managedFields` are left as the
    /// mutation returns them (server-internal writes, and applies, which set them themselves).
    pub async fn guaranteed_update_by<F>(
        &self,
        scope: &Scope,
        name: &str,
        precondition: Option<Revision>,
        dry_run: bool,
        writer: Option<&Writer>,
        mutate: F,
    ) -> ApiResult<WriteResult>
    where
        F: Fn(&Value) -> ApiResult<Value>,
    {
        let def = scope.def.clone();
        let key = def.key(scope.namespace.as_deref(), name);
        let mut from = ReadFrom::first(dry_run);
        for _ in 0..UPDATE_RETRIES {
            let (current, revision, cached) = self.current_for_write(scope, name, from).await?;
            let step = async {
                if let Some(expected) = precondition
                    && expected != revision
                {
                    return Err(ApiError::stale_object(
                        scope.group(),
                        scope.resource(),
                        name,
                    ));
                }
                let mut next = mutate(&current)?;
                meta_mut(&mut next).insert("resourceVersion".into(), json!(revision.to_string()));
                crate::admission::mutate(self, scope, &mut next, Some(&current)).await?;
                self.admit(scope, &mut next, Some(&current))?;
                let charge =
                    crate::admission::validate(self, scope, &next, Some(&current), dry_run).await?;
                if let Some(writer) = writer {
                    writer.track(&def, &current, &mut next);
                }
                if def.tracks_generation && spec_changed(&current, &next) {
                    let generation = meta(&current)
                        .and_then(|m| m.get("generation"))
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    meta_mut(&mut next).insert("generation".into(), json!(generation + 1));
                }
                if object::is_deleting(&current) {
                    let old_finalizers = object::finalizers(&current);
                    for f in object::finalizers(&next) {
                        if !old_finalizers.contains(&f) {
                            return Err(ApiError::invalid(
                                def.group.as_str(),
                                &def.kind,
                                name,
                                &[FieldError::forbidden(
                                    "metadata.finalizers",
                                    &format!(
                                        "no new finalizers can be added if the object is being deleted, found new finalizers [{f}]"
                                    ),
                                )],
                            ));
                        }
                    }
                }
                if next == current {
                    return Ok(Step::Unwritten(current));
                }
                if dry_run {
                    return Ok(Step::Unwritten(next));
                }
                let finished = deletes_during_update(&def, &current, &next);
                let outcome = if finished {
                    self.store
                        .delete(&key, Some(revision))
                        .await
                        .map(|(rev, _)| rev)
                } else {
                    let write = TxnWrite::Update {
                        key: key.clone(),
                        value: object::to_storage_bytes(&next),
                        expected: revision,
                    };
                    self.write_charged(write, charge)
                        .await?
                        .map_err(|(e, _)| e)
                };
                match outcome {
                    Ok(rev) => {
                        object::set_resource_version(&mut next, rev);
                        Ok(Step::Written(next))
                    }
                    Err(StoreError::Conflict {
                        current: present, ..
                    }) if precondition.is_none() => Ok(Step::Raced(present)),
                    Err(e) => Err(ApiError::from_store(
                        e,
                        scope.group(),
                        scope.resource(),
                        name,
                    )),
                }
            }
            .await;
            match Step::settle(step, cached) {
                ControlFlow::Break(outcome) => {
                    return outcome.map(|object| self.updated(&def, object));
                }
                ControlFlow::Continue(next) => from = next,
            }
        }
        Err(ApiError::conflict(
            scope.group(),
            scope.resource(),
            name,
            "too many concurrent updates; try again",
        ))
    }

    /// Deletes an object, honouring preconditions, finalizers and graceful deletion.
    /// Returns the object as it was deleted (or as it now is, when deletion is pending).
    pub async fn delete(
        &self,
        scope: &Scope,
        name: &str,
        options: &DeleteOptions,
    ) -> ApiResult<Value> {
        let def = scope.def.clone();
        let key = def.key(scope.namespace.as_deref(), name);
        let mut from = ReadFrom::first(options.dry_run);
        for _ in 0..UPDATE_RETRIES {
            let (current, revision, cached) = self.current_for_write(scope, name, from).await?;
            let step = async {
                options.check_preconditions(scope, name, &current, revision)?;
                let mut next = current.clone();
                if !mark_for_deletion(&def, &mut next, options) {
                    if options.dry_run {
                        return Ok(Step::Unwritten(current.clone()));
                    }
                    let outcome = self.store.delete(&key, Some(revision)).await;
                    return match outcome {
                        Ok((rev, _)) => {
                            let mut gone = current.clone();
                            object::set_resource_version(&mut gone, rev);
                            Ok(Step::Written(gone))
                        }
                        Err(StoreError::Conflict {
                            current: present, ..
                        }) => Ok(Step::Raced(present)),
                        Err(e) => Err(ApiError::from_store(
                            e,
                            scope.group(),
                            scope.resource(),
                            name,
                        )),
                    };
                }
                // Pending: graceful deletion or finalizers hold the object for now.
                if next == current || options.dry_run {
                    return Ok(Step::Unwritten(next));
                }
                let outcome = self
                    .store
                    .update(&key, object::to_storage_bytes(&next), revision)
                    .await;
                match outcome {
                    Ok(rev) => {
                        object::set_resource_version(&mut next, rev);
                        Ok(Step::Written(next))
                    }
                    Err(StoreError::Conflict {
                        current: present, ..
                    }) => Ok(Step::Raced(present)),
                    Err(e) => Err(ApiError::from_store(
                        e,
                        scope.group(),
                        scope.resource(),
                        name,
                    )),
                }
            }
            .await;
            match Step::settle(step, cached) {
                ControlFlow::Break(outcome) => {
                    return outcome.map(|object| self.present(&def, object));
                }
                ControlFlow::Continue(next) => from = next,
            }
        }
        Err(ApiError::conflict(
            scope.group(),
            scope.resource(),
            name,
            "too many concurrent updates; try again",
        ))
    }

    /// Deletes every object a list with the same selectors would return.
    pub async fn delete_collection(
        &self,
        scope: &Scope,
        query: &Query,
        options: &DeleteOptions,
    ) -> ApiResult<ListResult> {
        let mut list_query = query.clone();
        list_query.limit = None;
        list_query.continue_token = None;
        let listed = self.list(scope, &list_query).await?;
        let mut deleted = Vec::new();
        for item in listed.items {
            let value: Value =
                serde_json::from_slice(&item).map_err(|e| ApiError::internal(e.to_string()))?;
            let item_scope = Scope {
                def: scope.def.clone(),
                namespace: Some(object::namespace(&value).to_string()).filter(|n| !n.is_empty()),
            };
            match self
                .delete(&item_scope, object::name(&value), options)
                .await
            {
                Ok(obj) => deleted.push(Bytes::from(
                    serde_json::to_vec(&obj).expect("JSON serialises"),
                )),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ListResult {
            items: deleted,
            revision: listed.revision,
            continue_token: None,
            remaining: None,
        })
    }

    /// The autoscaling/v1 Scale view of an object with `.spec.replicas`.
    pub fn scale_of(&self, def: &ResourceDef, obj: &Value) -> Value {
        let m = meta(obj).cloned().unwrap_or_default();
        let mut scale_meta = Map::new();
        for field in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "creationTimestamp",
        ] {
            if let Some(v) = m.get(field) {
                scale_meta.insert(field.into(), v.clone());
            }
        }
        let paths = scale_paths(def);
        let selector = match &paths.label_selector {
            // A custom resource names where its selector string lives.
            Some(path) => obj
                .pointer(path)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            None => obj
                .pointer("/spec/selector")
                .map(selector_string)
                .unwrap_or_default(),
        };
        let replicas = |path: &str| obj.pointer(path).and_then(Value::as_i64).unwrap_or(0);
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": scale_meta,
            "spec": { "replicas": replicas(&paths.spec_replicas) },
            "status": {
                "replicas": replicas(&paths.status_replicas),
                "selector": selector,
            },
        })
    }

    /// Writes a Scale's replicas into the object.
    pub async fn update_scale(
        &self,
        scope: &Scope,
        name: &str,
        scale: Value,
        query: &Query,
    ) -> ApiResult<Value> {
        let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64);
        let Some(replicas) = replicas.filter(|r| *r >= 0) else {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                &[FieldError::invalid(
                    "spec.replicas",
                    scale.pointer("/spec/replicas").unwrap_or(&Value::Null),
                    "must be greater than or equal to 0",
                )],
            ));
        };
        let precondition = object::meta_str(&scale, "resourceVersion")
            .filter(|r| !r.is_empty())
            .map(parse_revision)
            .transpose()?;
        let result = self
            .guaranteed_update_by(
                scope,
                name,
                precondition,
                query.dry_run,
                Some(&Writer::new(query, Some(Subresource::Scale))),
                |current| {
                    let mut next = current.clone();
                    set_replicas(&scope.def, &mut next, replicas);
                    Ok(next)
                },
            )
            .await?;
        Ok(self.scale_of(&scope.def, &result.object))
    }
}

/// Where a resource keeps its replicas: `.spec.replicas` for built-in kinds, the CRD's paths for
/// custom resources.
fn scale_paths(def: &ResourceDef) -> crate::crd::ScalePaths {
    def.custom
        .as_ref()
        .and_then(|c| c.scale.clone())
        .unwrap_or_else(|| crate::crd::ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            label_selector: None,
        })
}

/// Sets the desired replicas of a scalable object.
pub(crate) fn set_replicas(def: &ResourceDef, obj: &mut Value, replicas: i64) {
    let path = scale_paths(def).spec_replicas;
    let mut target = obj;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !target.is_object() {
            *target = json!({});
        }
        if i == parts.len() - 1 {
            target[*part] = json!(replicas);
            return;
        }
        target = &mut target[*part];
    }
}

/// Who makes a write, for field ownership: the manager and the subresource written through.
pub struct Writer {
    pub manager: String,
    pub subresource: &'static str,
}

impl Writer {
    pub fn new(query: &Query, subresource: Option<Subresource>) -> Self {
        let subresource = match subresource {
            Some(Subresource::Status) => "status",
            Some(Subresource::Scale) => "scale",
            _ => "",
        };
        Writer {
            manager: query.manager(),
            subresource,
        }
    }

    /// Records in `next` the fields this write changed relative to `current`.
    fn track(&self, def: &ResourceDef, current: &Value, next: &mut Value) {
        // A body without managedFields keeps the current ones; an empty list resets them.
        let keep = current.pointer("/metadata/managedFields").cloned();
        let m = meta_mut(next);
        match (m.get("managedFields"), keep) {
            (None, Some(current_fields)) => {
                m.insert("managedFields".into(), current_fields);
            }
            (Some(Value::Array(a)), _) if a.is_empty() => {
                m.remove("managedFields");
            }
            _ => {}
        }
        let api_version = def.api_version();
        let now = object::now_rfc3339();
        let ctx = ssa::WriteContext {
            manager: &self.manager,
            api_version: &api_version,
            subresource: self.subresource,
            now: &now,
        };
        ssa::track_update(
            Some(current),
            next,
            &ctx,
            ssa::types::for_resource(def).as_ref(),
        );
    }
}

/// The label selector of a workload as the string form the Scale status carries.
pub fn selector_string(selector: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default()
            {
                "In" => parts.push(format!("{key} in ({})", values.join(","))),
                "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
                "Exists" => parts.push(key.to_string()),
                "DoesNotExist" => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    if parts.is_empty()
        && selector.is_object()
        && !selector.as_object().is_some_and(|m| m.is_empty())
    {
        return String::new();
    }
    parts.join(",")
}

/// Options of a delete, from the body (`DeleteOptions`) and the query string.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    pub fn from_request(body: &[u8], content_type: &str, query: &Query) -> ApiResult<Self> {
        let mut options = DeleteOptions {
            grace_period_seconds: query.grace_period_seconds,
            propagation_policy: query.propagation_policy.clone(),
            dry_run: query.dry_run,
            ..Default::default()
        };
        if !body.iter().all(u8::is_ascii_whitespace) {
            let value = decode_body(body, content_type)?;
            if let Some(kind) = value.get("kind").and_then(Value::as_str)
                && kind != "DeleteOptions"
            {
                return Err(ApiError::bad_request(format!(
                    "expected a DeleteOptions body, got kind {kind:?}"
                )));
            }
            if let Some(g) = value.get("gracePeriodSeconds").filter(|v| !v.is_null()) {
                options.grace_period_seconds = Some(g.as_i64().ok_or_else(|| {
                    ApiError::bad_request("gracePeriodSeconds must be an integer")
                })?);
            }
            if let Some(p) = value.get("propagationPolicy").and_then(Value::as_str) {
                options.propagation_policy = Some(p.to_string());
            }
            if let Some(uid) = value.pointer("/preconditions/uid").and_then(Value::as_str) {
                options.precondition_uid = Some(uid.to_string());
            }
            if let Some(rv) = value
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
            {
                options.precondition_resource_version = Some(rv.to_string());
            }
            if let Some(dry) = value.get("dryRun").and_then(Value::as_array) {
                options.dry_run |= dry.iter().any(|d| d.as_str() == Some("All"));
            }
        }
        if let Some(policy) = &options.propagation_policy
            && !matches!(policy.as_str(), "Orphan" | "Background" | "Foreground")
        {
            return Err(ApiError::invalid(
                "",
                "DeleteOptions",
                "",
                &[FieldError::not_supported(
                    "propagationPolicy",
                    &json!(policy),
                    &["Foreground", "Background", "Orphan"],
                )],
            ));
        }
        if options.grace_period_seconds.is_some_and(|g| g < 0) {
            options.grace_period_seconds = Some(0);
        }
        Ok(options)
    }

    fn check_preconditions(
        &self,
        scope: &Scope,
        name: &str,
        current: &Value,
        revision: Revision,
    ) -> ApiResult<()> {
        if let Some(uid) = &self.precondition_uid
            && object::meta_str(current, "uid") != Some(uid.as_str())
        {
            return Err(ApiError::conflict(
                scope.group(),
                scope.resource(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    object::meta_str(current, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &self.precondition_resource_version
            && *rv != revision.to_string()
        {
            return Err(ApiError::conflict(
                scope.group(),
                scope.resource(),
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {revision}"
                ),
            ));
        }
        Ok(())
    }
}

/// Sets the system-owned metadata of a new object, as upstream's `BeforeCreate`.
fn prepare_create(def: &ResourceDef, obj: &mut Value) {
    let m = meta_mut(obj);
    // Protobuf clients send every metadata field, empty ones included; upstream's JSON form
    // omits them, and so do we. (deletionGracePeriodSeconds is the one field where 0 means
    // something, and it is system-owned.)
    m.retain(|_, v| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_i64() != Some(0),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Bool(_) => true,
    });
    let m = meta_mut(obj);
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
    m.remove("resourceVersion");
    m.remove("deletionTimestamp");
    m.remove("deletionGracePeriodSeconds");
    m.remove("selfLink");
    if def.tracks_generation {
        m.insert("generation".into(), json!(1));
    } else {
        m.remove("generation");
    }
    if def.has(Subresource::Status) && def.kind != "Namespace" && def.kind != "Node" {
        // Status is the controllers' to write; a new object starts without one.
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
    if def.kind == "Pod" {
        obj["status"] = json!({ "phase": "Pending", "qosClass": qos_class(obj) });
    }
}

/// The QoS class upstream computes for a pod from its containers' requests and limits.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any_set = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any_set = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any_set, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Upstream's generated-name suffix: five characters from an alphabet without vowels.
fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let random = uuid::Uuid::new_v4();
    let suffix: String = random
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    let max_prefix = 63 - 5;
    let prefix = if prefix.len() > max_prefix {
        &prefix[..max_prefix]
    } else {
        prefix
    };
    format!("{prefix}{suffix}")
}

/// Builds the object an update stores from the current one and the body, per endpoint.
pub(crate) fn merge_for_update(
    def: &ResourceDef,
    subresource: Option<Subresource>,
    current: &Value,
    next: &mut Value,
) {
    // System-owned metadata always comes from the stored object.
    let current_meta = meta(current).cloned().unwrap_or_default();
    let next_meta = meta_mut(next);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "name",
        "namespace",
        "selfLink",
    ] {
        match current_meta.get(field) {
            Some(v) => {
                next_meta.insert(field.into(), v.clone());
            }
            None => {
                next_meta.remove(field);
            }
        }
    }
    match subresource {
        None if def.has(Subresource::Status) => {
            // The main endpoint ignores status changes.
            match current.get("status") {
                Some(status) => next["status"] = status.clone(),
                None => {
                    if let Some(o) = next.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        Some(Subresource::Status) => {
            // The status endpoint ignores everything but status.
            let status = next.get("status").cloned();
            *next = current.clone();
            match status {
                Some(s) => next["status"] = s,
                None => {
                    if let Some(o) = next.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        Some(Subresource::Finalize) => {
            let finalizers = next.pointer("/spec/finalizers").cloned();
            *next = current.clone();
            match finalizers {
                Some(f) => next["spec"]["finalizers"] = f,
                None => {
                    if let Some(spec) = next.get_mut("spec").and_then(Value::as_object_mut) {
                        spec.remove("finalizers");
                    }
                }
            }
        }
        _ => {}
    }
}

fn spec_changed(old: &Value, new: &Value) -> bool {
    // Everything but metadata and status counts as spec for generation purposes.
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            o.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

/// A namespace stays until its `spec.finalizers` are cleared by the namespace controller.
fn holds_namespace_finalizers(def: &ResourceDef, obj: &Value) -> bool {
    def.kind == "Namespace"
        && def.group.is_empty()
        && obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
}

/// Decides whether deleting `obj` must wait (finalizers, graceful pod deletion, namespace
/// termination); if so, marks it deleting in place and returns true.
fn mark_for_deletion(def: &ResourceDef, obj: &mut Value, options: &DeleteOptions) -> bool {
    let mut finalizers = object::finalizers(obj);
    match options.propagation_policy.as_deref() {
        Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
            finalizers.push("foregroundDeletion".into())
        }
        Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => {
            finalizers.push("orphan".into())
        }
        _ => {}
    }
    let is_namespace = def.kind == "Namespace" && def.group.is_empty();
    let graceful_pod =
        def.kind == "Pod" && def.group.is_empty() && pod_needs_graceful_deletion(obj, options);
    let must_wait = !finalizers.is_empty()
        || (is_namespace && holds_namespace_finalizers(def, obj))
        || graceful_pod;
    if !must_wait {
        return false;
    }
    let already = object::is_deleting(obj);
    let grace = if graceful_pod {
        options
            .grace_period_seconds
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
    } else {
        0
    };
    let m = meta_mut(obj);
    if !already {
        m.insert("deletionTimestamp".into(), json!(object::rfc3339_in(grace)));
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
    } else if graceful_pod {
        // A second delete may shorten the grace period, never lengthen it.
        let current = m
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(grace);
        if grace < current {
            m.insert("deletionTimestamp".into(), json!(object::rfc3339_in(grace)));
            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), json!(finalizers));
    }
    if is_namespace {
        obj["status"]["phase"] = json!("Terminating");
    }
    true
}

/// A stored object as a value, with its revision.
fn stored_value(kv: &KeyValue) -> ApiResult<(Value, Revision)> {
    let value = object::from_kv(kv)
        .ok_or_else(|| ApiError::internal(format!("stored object {} is not JSON", kv.key)))?;
    Ok((value, kv.mod_revision))
}

/// Whether an update completes a pending deletion, as upstream decides: the object was marked
/// for deletion with no grace period left to wait out, and the update leaves no finalizers. A
/// pod in its grace period stays until its kubelet deletes it, whatever status it reports.
fn deletes_during_update(def: &ResourceDef, current: &Value, next: &Value) -> bool {
    let grace = meta(current)
        .and_then(|m| m.get("deletionGracePeriodSeconds"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    object::is_deleting(current)
        && grace == 0
        && object::finalizers(next).is_empty()
        && !holds_namespace_finalizers(def, next)
}

/// Upstream deletes a pod at once unless a kubelet must stop it first: the pod is bound to a
/// node, not finished, and the grace period is not zero.
fn pod_needs_graceful_deletion(pod: &Value, options: &DeleteOptions) -> bool {
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    let finished = matches!(phase, "Succeeded" | "Failed");
    bound && !finished && options.grace_period_seconds != Some(0)
}

impl ApiError {
    /// Marks a 403 as upstream's namespace-terminating cause, which clients look for.
    fn with_namespace_terminating(mut self) -> Self {
        self.details = Some(
            json!({ "causes": [{ "reason": "NamespaceTerminating", "message": "namespace is being terminated", "field": "metadata.namespace" }] }),
        );
        self
    }
}

#[cfg(test)]
mod tests;
