//! OpenAPI documents for every served kind, and server-side field validation.
//!
//! kubectl reads these documents for three things: `kubectl explain` (OpenAPI v3), deciding
//! whether the server validates fields itself (it looks for a `fieldValidation` parameter on
//! the kind's PATCH operation in the v3 document; if absent it validates client-side against
//! the v2 document) and strategic-merge metadata. The schemas are never written by hand: a
//! built-in kind's schema comes from its `k8s-openapi` type through `schemars`
//! ([`ResourceDef::schema`]), a custom resource's from its definition
//! ([`ResourceDef::openapi_schema`]).
//!
//! Documents are built on first request, not at start-up, and cached as bytes until the
//! catalog's generation moves. Served at `/openapi/v2` (JSON, or gnostic protobuf as kubectl
//! asks), `/openapi/v3` (an index of group-versions with content hashes) and
//! `/openapi/v3/api/v1`, `/openapi/v3/apis/GROUP/VERSION`.

mod fields;
mod proto;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::autoscaling;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

pub use fields::{FieldSchemas, Shape, check_fields, duplicate_fields};

use crate::errors::{ApiError, ApiResult};
use crate::handler::Body;
use crate::kinds::{Catalog, FieldError, ResourceDef, Subresource};

const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The same media type spelled without `@`, which is not valid in a media type: the form
/// upstream answers with, because client-go rejects a response whose Content-Type does
/// not parse.
const V2_PROTOBUF_OLD: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// The Kubernetes API level the documents describe, as `/version` reports it.
const API_LEVEL: &str = "v1.32.0";
/// Patch bodies the server accepts; listed on PATCH operations. kubectl computes strategic
/// merge patches from OpenAPI only when this list includes their media type.
const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
];

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

// -------------------------------------------------------------------------------------------
// The cache

/// The documents derived from one catalog generation, built on demand.
#[derive(Default)]
pub struct Cache {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    generation: Option<u64>,
    v2_json: Option<Doc>,
    v2_proto: Option<Doc>,
    v3: Option<Arc<V3Docs>>,
    fields: Option<Arc<FieldIndex>>,
}

#[derive(Clone)]
struct Doc {
    bytes: Bytes,
    etag: String,
}

impl Doc {
    fn new(bytes: Vec<u8>) -> Self {
        let etag = content_hash(&bytes);
        Doc {
            bytes: bytes.into(),
            etag,
        }
    }
}

struct V3Docs {
    index: Bytes,
    /// Keyed by the path after `/openapi/v3/`: `api/v1`, `apis/apps/v1`.
    docs: BTreeMap<String, Doc>,
}

/// What field validation needs: every definition in compiled form, and each kind's root.
struct FieldIndex {
    schemas: FieldSchemas,
    roots: BTreeMap<(String, String, String), String>,
}

impl Cache {
    /// Runs `f` on the cached state, first dropping it if the catalog has changed since.
    fn with<T>(&self, catalog: &Catalog, f: impl FnOnce(&mut State) -> T) -> T {
        let generation = catalog.generation();
        // A panic while building leaves at worst a half-filled cache of complete entries.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation != Some(generation) {
            *state = State {
                generation: Some(generation),
                ..State::default()
            };
        }
        f(&mut state)
    }

    fn v2_json(&self, catalog: &Catalog) -> Doc {
        self.with(catalog, |s| {
            s.v2_json
                .get_or_insert_with(|| {
                    let doc = v2_document(&catalog.all());
                    Doc::new(serde_json::to_vec(&doc).unwrap_or_default())
                })
                .clone()
        })
    }

    fn v2_proto(&self, catalog: &Catalog) -> Doc {
        self.with(catalog, |s| {
            s.v2_proto
                .get_or_insert_with(|| Doc::new(proto::document(&v2_document(&catalog.all()))))
                .clone()
        })
    }

    fn v3(&self, catalog: &Catalog) -> Arc<V3Docs> {
        self.with(catalog, |s| {
            s.v3.get_or_insert_with(|| Arc::new(v3_documents(&catalog.all())))
                .clone()
        })
    }

    fn fields(&self, catalog: &Catalog) -> Arc<FieldIndex> {
        self.with(catalog, |s| {
            s.fields
                .get_or_insert_with(|| {
                    let built = Definitions::build(&catalog.all());
                    let roots = built
                        .roots
                        .iter()
                        .map(|(d, name)| {
                            (
                                (d.group.clone(), d.version.clone(), d.kind.clone()),
                                name.clone(),
                            )
                        })
                        .collect();
                    Arc::new(FieldIndex {
                        schemas: FieldSchemas::compile(&built.schemas),
                        roots,
                    })
                })
                .clone()
        })
    }
}

/// A 128-bit FNV-1a hash in upper-case hex: stable across processes and builds, so a
/// client's cache of `?hash=` URLs stays valid exactly as long as the content does.
fn content_hash(bytes: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let hash = bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME));
    format!("{hash:032X}")
}

// -------------------------------------------------------------------------------------------
// Schemas

/// Every schema the documents publish, in v2 form (`#/definitions/` references).
struct Definitions {
    schemas: Map<String, Value>,
    /// Each served resource and the name of its kind's definition.
    roots: Vec<(Arc<ResourceDef>, String)>,
}

fn ref_name(schema: &schemars::Schema) -> Option<String> {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .map(str::to_string)
}

fn v2_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/definitions/{name}") })
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({ "group": group, "kind": kind, "version": version })
}

/// Upstream's definition name for a custom resource: the group reversed, as a Java package.
fn custom_name(def: &ResourceDef) -> String {
    let reversed: Vec<&str> = def.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), def.version, def.kind)
}

impl Definitions {
    fn build(defs: &[Arc<ResourceDef>]) -> Self {
        let settings = SchemaSettings::draft07().with(|s| {
            // Keep `$ref` siblings (field descriptions) and add no `$schema`.
            s.transforms.clear();
            s.meta_schema = None;
        });
        let mut generator = settings.into_generator();
        // Types the operations mention besides the kinds themselves.
        generator.subschema_for::<meta::Status>();
        generator.subschema_for::<meta::DeleteOptions>();
        generator.subschema_for::<meta::WatchEvent<()>>();
        generator.subschema_for::<meta::Patch>();
        generator.subschema_for::<meta::ListMeta>();
        generator.subschema_for::<meta::ObjectMeta>();
        generator.subschema_for::<autoscaling::v1::Scale>();

        let mut roots = Vec::new();
        let mut custom = Vec::new();
        for def in defs {
            if let Some(schema) = &def.openapi_schema {
                let name = custom_name(def);
                custom.push((name.clone(), schema.clone()));
                roots.push((def.clone(), name));
            } else if let Some(f) = def.schema
                && let Some(name) = ref_name(&f(&mut generator))
            {
                roots.push((def.clone(), name));
            }
        }
        let mut schemas = generator.take_definitions(false);
        for (name, mut schema) in custom {
            // A custom resource's schema may leave out the fields every object has.
            if let Some(obj) = schema.as_object_mut() {
                obj.entry("type").or_insert(json!("object"));
                let props = obj
                    .entry("properties")
                    .or_insert_with(|| json!({}))
                    .as_object_mut();
                if let Some(props) = props {
                    props
                        .entry("apiVersion")
                        .or_insert(json!({ "type": "string" }));
                    props.entry("kind").or_insert(json!({ "type": "string" }));
                    props
                        .entry("metadata")
                        .or_insert(v2_ref(&format!("{META}.ObjectMeta")));
                }
            }
            schemas.insert(name, schema);
        }
        let mut gvks: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut group_versions = BTreeSet::new();
        for (def, name) in &roots {
            gvks.entry(name.clone())
                .or_default()
                .push(gvk(&def.group, &def.version, &def.kind));
            group_versions.insert((def.group.clone(), def.version.clone()));
            // The list kind, derived from the item kind.
            let list_name = format!("{name}List");
            if !schemas.contains_key(&list_name) {
                schemas.insert(
                    list_name.clone(),
                    json!({
                        "description": format!("{} is a list of {}.", def.list_kind, def.kind),
                        "type": "object",
                        "properties": {
                            "apiVersion": { "description": "APIVersion defines the versioned schema of this representation of an object.", "type": "string" },
                            "items": { "description": format!("List of {}.", def.plural), "type": "array", "items": v2_ref(name) },
                            "kind": { "description": "Kind is a string value representing the REST resource this object represents.", "type": "string" },
                            "metadata": v2_ref(&format!("{META}.ListMeta")),
                        },
                        "required": ["items"],
                    }),
                );
            }
            gvks.entry(list_name)
                .or_default()
                .push(gvk(&def.group, &def.version, &def.list_kind));
        }
        gvks.entry(format!("{META}.Status"))
            .or_default()
            .push(gvk("", "v1", "Status"));
        gvks.entry("io.k8s.api.autoscaling.v1.Scale".into())
            .or_default()
            .push(gvk("autoscaling", "v1", "Scale"));
        for (group, version) in &group_versions {
            for kind in ["DeleteOptions", "WatchEvent"] {
                gvks.entry(format!("{META}.{kind}"))
                    .or_default()
                    .push(gvk(group, version, kind));
            }
        }
        for (_, name) in &roots {
            // k8s-openapi marks `metadata` required because its Rust field is not optional;
            // upstream's schemas do not (kubectl explain shows it as `-required-` otherwise).
            if let Some(schema) = schemas.get_mut(name).and_then(Value::as_object_mut)
                && let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut)
            {
                required.retain(|r| r != "metadata");
                if required.is_empty() {
                    schema.remove("required");
                }
            }
        }
        for (name, list) in gvks {
            if let Some(obj) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
                obj.insert("x-kubernetes-group-version-kind".into(), Value::Array(list));
            }
        }
        Definitions { schemas, roots }
    }
}

// -------------------------------------------------------------------------------------------
// Operations

/// A parameter, in a form both document versions are rendered from.
struct Param {
    name: &'static str,
    location: &'static str,
    type_: &'static str,
    description: &'static str,
}

const fn query(name: &'static str, type_: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: "query",
        type_,
        description,
    }
}

const PRETTY: Param = query(
    "pretty",
    "string",
    "If 'true', the output is pretty printed.",
);
const NAME: Param = Param {
    name: "name",
    location: "path",
    type_: "string",
    description: "name of the object",
};
const NAMESPACE: Param = Param {
    name: "namespace",
    location: "path",
    type_: "string",
    description: "object name and auth scope, such as for teams and projects",
};
const DRY_RUN: Param = query(
    "dryRun",
    "string",
    "When present, indicates that modifications should not be persisted. The only valid value is All.",
);
const FIELD_MANAGER: Param = query(
    "fieldManager",
    "string",
    "A name associated with the actor or entity that is making these changes.",
);
const FIELD_VALIDATION: Param = query(
    "fieldValidation",
    "string",
    "How the server treats fields of the request body that the schema does not declare, or that appear more than once: Ignore drops them silently, Warn (the default) accepts the request and answers with a Warning header per field, Strict refuses the request.",
);
const FORCE: Param = query(
    "force",
    "boolean",
    "Force is going to \"force\" Apply requests; it must be unset for other patches.",
);
const LIST_PARAMS: &[Param] = &[
    query(
        "allowWatchBookmarks",
        "boolean",
        "Requests watch events of type BOOKMARK.",
    ),
    query(
        "continue",
        "string",
        "The continue token from a previous page of results.",
    ),
    query(
        "fieldSelector",
        "string",
        "Restricts the returned objects by their fields.",
    ),
    query(
        "labelSelector",
        "string",
        "Restricts the returned objects by their labels.",
    ),
    query(
        "limit",
        "integer",
        "The maximum number of objects to return in one page.",
    ),
    query(
        "resourceVersion",
        "string",
        "Constrains which resource versions the request may be served from.",
    ),
    query(
        "resourceVersionMatch",
        "string",
        "How resourceVersion applies to list calls: Exact or NotOlderThan.",
    ),
    query(
        "sendInitialEvents",
        "boolean",
        "With watch=true, begins the stream with synthetic events for the current state.",
    ),
    query(
        "timeoutSeconds",
        "integer",
        "Timeout for the list or watch call.",
    ),
    query(
        "watch",
        "boolean",
        "Watch for changes and return them as a stream of events.",
    ),
];
const DELETE_PARAMS: &[Param] = &[
    DRY_RUN,
    query(
        "gracePeriodSeconds",
        "integer",
        "The duration in seconds before the object should be deleted.",
    ),
    query(
        "propagationPolicy",
        "string",
        "Whether and how garbage collection is performed: Orphan, Background or Foreground.",
    ),
];

struct Operation {
    method: &'static str,
    action: &'static str,
    id: String,
    description: String,
    gvk: Value,
    params: Vec<&'static Param>,
    /// Definition name of the request body.
    body: Option<String>,
    /// Definition name of the response, and the success codes.
    response: String,
    codes: &'static [&'static str],
    patch: bool,
}

struct PathSpec {
    path: String,
    params: Vec<&'static Param>,
    ops: Vec<Operation>,
}

/// `rbac.authorization.k8s.io` → `RbacAuthorization`, as upstream names operations.
fn group_ident(group: &str) -> String {
    if group.is_empty() {
        return "Core".into();
    }
    group
        .trim_end_matches(".k8s.io")
        .split(['.', '-'])
        .map(capitalise)
        .collect()
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// `api/v1` or `apis/GROUP/VERSION`: the group-version's URL prefix, without the slash.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The paths of a resource, with only the operations its verbs allow (the access reviews, for
/// one, are create-only).
fn paths_for(def: &ResourceDef, root: &str) -> Vec<PathSpec> {
    let allowed = |action: &str| {
        let verb = match action {
            "post" => "create",
            "put" => "update",
            "watchlist" => "watch",
            other => other,
        };
        def.verbs.contains(&verb)
    };
    all_paths_for(def, root)
        .into_iter()
        .filter_map(|mut spec| {
            spec.ops.retain(|op| allowed(op.action));
            (!spec.ops.is_empty()).then_some(spec)
        })
        .collect()
}

fn all_paths_for(def: &ResourceDef, root: &str) -> Vec<PathSpec> {
    let prefix = format!("/{}", gv_path(&def.group, &def.version));
    let ident = format!("{}{}", group_ident(&def.group), capitalise(&def.version));
    let scoped = if def.namespaced { "Namespaced" } else { "" };
    let kind = &def.kind;
    let list = format!("{root}List");
    let this = gvk(&def.group, &def.version, kind);
    let (collection, watch_collection) = if def.namespaced {
        (
            format!("{prefix}/namespaces/{{namespace}}/{}", def.plural),
            format!("{prefix}/watch/namespaces/{{namespace}}/{}", def.plural),
        )
    } else {
        (
            format!("{prefix}/{}", def.plural),
            format!("{prefix}/watch/{}", def.plural),
        )
    };
    let scope_params: Vec<&'static Param> = if def.namespaced {
        vec![&NAMESPACE, &PRETTY]
    } else {
        vec![&PRETTY]
    };
    let item_params: Vec<&'static Param> = if def.namespaced {
        vec![&NAME, &NAMESPACE, &PRETTY]
    } else {
        vec![&NAME, &PRETTY]
    };
    let write = vec![&DRY_RUN, &FIELD_MANAGER, &FIELD_VALIDATION];
    let patch_params = vec![&DRY_RUN, &FIELD_MANAGER, &FIELD_VALIDATION, &FORCE];
    let op = |method, action, verb: &str, suffix: &str, description: String| Operation {
        method,
        action,
        id: format!("{verb}{ident}{scoped}{kind}{suffix}"),
        description,
        gvk: this.clone(),
        params: Vec::new(),
        body: None,
        response: root.to_string(),
        codes: &["200"],
        patch: false,
    };
    let status = format!("{META}.Status");
    let mut out = vec![
        PathSpec {
            path: collection.clone(),
            params: scope_params.clone(),
            ops: vec![
                Operation {
                    params: LIST_PARAMS.iter().collect(),
                    response: list.clone(),
                    ..op(
                        "get",
                        "list",
                        "list",
                        "",
                        format!("list or watch objects of kind {kind}"),
                    )
                },
                Operation {
                    params: write.clone(),
                    body: Some(root.to_string()),
                    codes: &["200", "201", "202"],
                    ..op("post", "post", "create", "", format!("create a {kind}"))
                },
                Operation {
                    id: format!("delete{ident}Collection{scoped}{kind}"),
                    params: LIST_PARAMS
                        .iter()
                        .filter(|p| !matches!(p.name, "watch" | "allowWatchBookmarks"))
                        .chain(DELETE_PARAMS)
                        .collect(),
                    body: Some(format!("{META}.DeleteOptions")),
                    response: status.clone(),
                    ..op(
                        "delete",
                        "deletecollection",
                        "delete",
                        "",
                        format!("delete collection of {kind}"),
                    )
                },
            ],
        },
        PathSpec {
            path: format!("{collection}/{{name}}"),
            params: item_params.clone(),
            ops: vec![
                op(
                    "get",
                    "get",
                    "read",
                    "",
                    format!("read the specified {kind}"),
                ),
                Operation {
                    params: write.clone(),
                    body: Some(root.to_string()),
                    codes: &["200", "201"],
                    ..op(
                        "put",
                        "put",
                        "replace",
                        "",
                        format!("replace the specified {kind}"),
                    )
                },
                Operation {
                    params: patch_params.clone(),
                    body: Some(format!("{META}.Patch")),
                    codes: &["200", "201"],
                    patch: true,
                    ..op(
                        "patch",
                        "patch",
                        "patch",
                        "",
                        format!("partially update the specified {kind}"),
                    )
                },
                Operation {
                    params: DELETE_PARAMS.iter().collect(),
                    body: Some(format!("{META}.DeleteOptions")),
                    codes: &["200", "202"],
                    ..op("delete", "delete", "delete", "", format!("delete a {kind}"))
                },
            ],
        },
        PathSpec {
            path: watch_collection,
            params: scope_params.iter().copied().chain(LIST_PARAMS).collect(),
            ops: vec![Operation {
                response: format!("{META}.WatchEvent"),
                ..op(
                    "get",
                    "watchlist",
                    "watch",
                    "List",
                    format!(
                        "watch individual changes to a list of {kind}. deprecated: use the 'watch' parameter with a list operation instead."
                    ),
                )
            }],
        },
    ];
    if def.namespaced {
        out.push(PathSpec {
            path: format!("{prefix}/{}", def.plural),
            params: vec![&PRETTY],
            ops: vec![Operation {
                id: format!("list{ident}{kind}ForAllNamespaces"),
                params: LIST_PARAMS.iter().collect(),
                response: list.clone(),
                ..op(
                    "get",
                    "list",
                    "list",
                    "",
                    format!("list or watch objects of kind {kind}"),
                )
            }],
        });
    }
    for sub in &def.subresources {
        let (body, sub_gvk) = match sub {
            Subresource::Status => (root.to_string(), this.clone()),
            Subresource::Scale => (
                "io.k8s.api.autoscaling.v1.Scale".to_string(),
                gvk("autoscaling", "v1", "Scale"),
            ),
            Subresource::Finalize => (root.to_string(), this.clone()),
            // Served as kinds of their own upstream; this server does not route them.
            Subresource::Binding | Subresource::Eviction => continue,
            // Streams proxied to the pod's node (`proxy.rs`), not object reads and writes.
            Subresource::Log
            | Subresource::Exec
            | Subresource::Attach
            | Subresource::PortForward => continue,
        };
        let name = capitalise(sub.name());
        let what = format!("{} of the specified {kind}", sub.name());
        let sub_op = |method, action, verb: &str, description: String| Operation {
            gvk: sub_gvk.clone(),
            response: body.clone(),
            ..op(method, action, verb, &name, description)
        };
        let mut ops = Vec::new();
        if *sub != Subresource::Finalize {
            ops.push(sub_op("get", "get", "read", format!("read {what}")));
        }
        ops.push(Operation {
            params: write.clone(),
            body: Some(body.clone()),
            codes: &["200", "201"],
            ..sub_op("put", "put", "replace", format!("replace {what}"))
        });
        if *sub != Subresource::Finalize {
            ops.push(Operation {
                params: patch_params.clone(),
                body: Some(format!("{META}.Patch")),
                codes: &["200", "201"],
                patch: true,
                ..sub_op(
                    "patch",
                    "patch",
                    "patch",
                    format!("partially update {what}"),
                )
            });
        }
        out.push(PathSpec {
            path: format!("{collection}/{{name}}/{}", sub.name()),
            params: item_params.clone(),
            ops,
        });
    }
    out
}

// -------------------------------------------------------------------------------------------
// Rendering

const PRODUCES: &[&str] = &["application/json", "application/yaml"];

fn v2_param(p: &Param) -> Value {
    let mut v = json!({
        "name": p.name,
        "in": p.location,
        "description": p.description,
        "type": p.type_,
    });
    if p.location == "path" {
        v["required"] = json!(true);
    } else {
        v["uniqueItems"] = json!(true);
    }
    v
}

fn v3_param(p: &Param) -> Value {
    let mut v = json!({
        "name": p.name,
        "in": p.location,
        "description": p.description,
        "schema": { "type": p.type_, "uniqueItems": true },
    });
    if p.location == "path" {
        v["required"] = json!(true);
    }
    v
}

fn extensions(op: &Operation) -> [(&'static str, Value); 2] {
    [
        ("x-kubernetes-action", json!(op.action)),
        ("x-kubernetes-group-version-kind", op.gvk.clone()),
    ]
}

fn v2_operation(op: &Operation) -> Value {
    let mut params: Vec<Value> = Vec::new();
    if let Some(body) = &op.body {
        params.push(
            json!({ "name": "body", "in": "body", "required": true, "schema": v2_ref(body) }),
        );
    }
    params.extend(op.params.iter().map(|p| v2_param(p)));
    let mut responses = Map::new();
    for code in op.codes {
        responses.insert(
            code.to_string(),
            json!({ "description": "OK", "schema": v2_ref(&op.response) }),
        );
    }
    responses.insert("401".into(), json!({ "description": "Unauthorized" }));
    let consumes: &[&str] = if op.patch { PATCH_TYPES } else { &["*/*"] };
    let mut v = json!({
        "description": op.description,
        "operationId": op.id,
        "consumes": consumes,
        "produces": PRODUCES,
        "schemes": ["https"],
        "parameters": params,
        "responses": responses,
    });
    for (k, e) in extensions(op) {
        v[k] = e;
    }
    v
}

fn v3_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn v3_operation(op: &Operation) -> Value {
    let content = |name: &str| -> Value {
        PRODUCES
            .iter()
            .map(|m| (m.to_string(), json!({ "schema": v3_ref(name) })))
            .collect::<Map<_, _>>()
            .into()
    };
    let mut responses = Map::new();
    for code in op.codes {
        responses.insert(
            code.to_string(),
            json!({ "description": "OK", "content": content(&op.response) }),
        );
    }
    responses.insert("401".into(), json!({ "description": "Unauthorized" }));
    let mut v = json!({
        "description": op.description,
        "operationId": op.id,
        "parameters": op.params.iter().map(|p| v3_param(p)).collect::<Vec<_>>(),
        "responses": responses,
    });
    if let Some(body) = &op.body {
        let types: &[&str] = if op.patch { PATCH_TYPES } else { &["*/*"] };
        let content: Map<String, Value> = types
            .iter()
            .map(|t| (t.to_string(), json!({ "schema": v3_ref(body) })))
            .collect();
        v["requestBody"] = json!({ "content": content, "required": true });
    }
    for (k, e) in extensions(op) {
        v[k] = e;
    }
    v
}

fn v2_document(defs: &[Arc<ResourceDef>]) -> Value {
    let built = Definitions::build(defs);
    let mut paths = Map::new();
    for (def, root) in &built.roots {
        for spec in paths_for(def, root) {
            let mut item = Map::new();
            for op in &spec.ops {
                item.insert(op.method.into(), v2_operation(op));
            }
            item.insert(
                "parameters".into(),
                spec.params.iter().map(|p| v2_param(p)).collect(),
            );
            paths.insert(spec.path, Value::Object(item));
        }
    }
    json!({
        "swagger": "2.0",
        "info": { "title": "Kubernetes", "version": API_LEVEL },
        "paths": paths,
        "definitions": built.schemas,
        "securityDefinitions": { "BearerToken": { "description": "Bearer Token authentication", "type": "apiKey", "name": "authorization", "in": "header" } },
        "security": [{ "BearerToken": [] }],
    })
}

/// Rewrites a v2 schema for v3: references point into `components/schemas`, and a
/// reference with siblings (a field's description) becomes `allOf`, as upstream writes it.
fn to_v3(schema: &Value) -> Value {
    match schema {
        Value::Object(obj) => {
            let mut out = Map::new();
            let reference = obj.get("$ref").and_then(Value::as_str);
            for (k, v) in obj {
                if k != "$ref" {
                    out.insert(k.clone(), to_v3(v));
                }
            }
            if let Some(r) = reference {
                let target = r.replacen("#/definitions/", "#/components/schemas/", 1);
                if out.is_empty() {
                    out.insert("$ref".into(), json!(target));
                } else {
                    out.insert("allOf".into(), json!([{ "$ref": target }]));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_v3).collect()),
        other => other.clone(),
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(obj) => {
            for (k, v) in obj {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.rsplit('/').next() {
                            out.push(name.to_string());
                        }
                    }
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// One v3 document per group-version, each with only the schemas its operations reach.
fn v3_documents(defs: &[Arc<ResourceDef>]) -> V3Docs {
    let built = Definitions::build(defs);
    let mut by_gv: BTreeMap<String, Vec<(&ResourceDef, &str)>> = BTreeMap::new();
    for (def, root) in &built.roots {
        by_gv
            .entry(gv_path(&def.group, &def.version))
            .or_default()
            .push((def, root));
    }
    let mut docs = BTreeMap::new();
    for (gv, members) in by_gv {
        let mut paths = Map::new();
        let mut wanted = Vec::new();
        for (def, root) in members {
            for spec in paths_for(def, root) {
                let mut item = Map::new();
                for op in &spec.ops {
                    let rendered = v3_operation(op);
                    collect_refs(&rendered, &mut wanted);
                    item.insert(op.method.into(), rendered);
                }
                item.insert(
                    "parameters".into(),
                    spec.params.iter().map(|p| v3_param(p)).collect(),
                );
                paths.insert(spec.path, Value::Object(item));
            }
        }
        let mut schemas = BTreeMap::new();
        while let Some(name) = wanted.pop() {
            if schemas.contains_key(&name) {
                continue;
            }
            if let Some(schema) = built.schemas.get(&name) {
                collect_refs(schema, &mut wanted);
                schemas.insert(name, to_v3(schema));
            }
        }
        let doc = json!({
            "openapi": "3.0.0",
            "info": { "title": "Kubernetes", "version": API_LEVEL },
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": { "BearerToken": { "type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header" } },
            },
        });
        docs.insert(gv, Doc::new(serde_json::to_vec(&doc).unwrap_or_default()));
    }
    let index: Map<String, Value> = docs
        .iter()
        .map(|(gv, doc)| {
            (
                gv.clone(),
                json!({ "serverRelativeURL": format!("/openapi/v3/{gv}?hash={}", doc.etag) }),
            )
        })
        .collect();
    let index = serde_json::to_vec(&json!({ "paths": index })).unwrap_or_default();
    V3Docs {
        index: index.into(),
        docs,
    }
}

// -------------------------------------------------------------------------------------------
// Serving

fn response(status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// Answers a document with its ETag; `304` when the client already has it.
fn document_response(
    headers: &HeaderMap,
    doc: &Doc,
    content_type: &str,
    immutable: bool,
) -> Response<Body> {
    let etag = format!("\"{}\"", doc.etag);
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if unchanged {
        response(StatusCode::NOT_MODIFIED, content_type, Bytes::new())
    } else {
        response(StatusCode::OK, content_type, doc.bytes.clone())
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    let cache = if immutable {
        // The URL names the content's hash, so it never changes.
        "public, immutable, max-age=31536000"
    } else {
        "no-cache, private"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// Which `/openapi/...` paths this module serves.
pub fn is_openapi_path(path: &str) -> bool {
    path == "/openapi/v2" || path == "/openapi/v3" || path.starts_with("/openapi/v3/")
}

/// Serves `/openapi/v2`, `/openapi/v3` and `/openapi/v3/<group-version>`.
pub fn serve(
    catalog: &Catalog,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> ApiResult<Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {path})"
        )));
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let wants = |media: &str| {
        accept
            .split(',')
            .any(|r| r.split(';').next().unwrap_or("").trim() == media)
    };
    let cache = &catalog.openapi;
    if path == "/openapi/v2" {
        if wants(V2_PROTOBUF) || wants(V2_PROTOBUF_OLD) {
            let doc = cache.v2_proto(catalog);
            return Ok(document_response(headers, &doc, V2_PROTOBUF_OLD, false));
        }
        let doc = cache.v2_json(catalog);
        return Ok(document_response(headers, &doc, "application/json", false));
    }
    let docs = cache.v3(catalog);
    if path == "/openapi/v3" {
        let mut r = response(StatusCode::OK, "application/json", docs.index.clone());
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        return Ok(r);
    }
    let gv = path
        .trim_start_matches("/openapi/v3/")
        .trim_end_matches('/');
    let doc = docs.docs.get(gv).ok_or_else(ApiError::no_route)?;
    let hash = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "hash")
            .map(|(_, v)| v.into_owned())
    });
    match hash {
        Some(h) if h != doc.etag => {
            // An outdated link: send the client to the current content, as upstream does.
            let mut r = response(StatusCode::MOVED_PERMANENTLY, "text/plain", Bytes::new());
            if let Ok(v) = HeaderValue::from_str(&format!("/openapi/v3/{gv}?hash={}", doc.etag)) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Ok(r)
        }
        Some(_) => Ok(document_response(headers, doc, "application/json", true)),
        None => Ok(document_response(headers, doc, "application/json", false)),
    }
}

// -------------------------------------------------------------------------------------------
// Field validation

/// The `fieldValidation` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    /// Parses the parameter; absent means `Warn`, upstream's server-side default.
    /// `options_kind` names the options type in the error (`CreateOptions`, `UpdateOptions`).
    pub fn parse(value: Option<&str>, options_kind: &str) -> ApiResult<Self> {
        match value.unwrap_or("") {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(ApiError::invalid(
                "meta.k8s.io",
                options_kind,
                "",
                &[FieldError::not_supported(
                    "fieldValidation",
                    &json!(other),
                    &["", "Ignore", "Strict", "Warn"],
                )],
            )),
        }
    }
}

/// Applies `fieldValidation` to a write: `Strict` refuses a body with undeclared or repeated
/// fields (400, upstream's strict-decoding message), `Warn` returns one warning per field for
/// the response's `Warning` headers, `Ignore` checks nothing.
pub fn validate_fields(
    catalog: &Catalog,
    def: &ResourceDef,
    raw_body: Option<&[u8]>,
    obj: &Value,
    mode: FieldValidation,
) -> ApiResult<Vec<String>> {
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let index = catalog.openapi.fields(catalog);
    let key = (def.group.clone(), def.version.clone(), def.kind.clone());
    let Some(root) = index.roots.get(&key) else {
        // A kind without a schema accepts any field, as upstream's unstructured kinds do.
        return Ok(Vec::new());
    };
    let problems = check_fields(&index.schemas, &Shape::Ref(root.clone()), obj, raw_body);
    if problems.is_empty() || mode == FieldValidation::Warn {
        return Ok(problems);
    }
    Err(ApiError::bad_request(format!(
        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
        problems.join(", "),
        kind = def.kind,
        version = def.version,
    )))
}

/// Drops the fields a kind's schema does not declare (built-in kinds; custom resources are
/// pruned by their structural schema). Kinds without a schema are left as they are.
pub fn prune_fields(catalog: &Catalog, def: &ResourceDef, obj: &mut Value) {
    let index = catalog.openapi.fields(catalog);
    let key = (def.group.clone(), def.version.clone(), def.kind.clone());
    if let Some(root) = index.roots.get(&key) {
        fields::prune_unknown(&index.schemas, &Shape::Ref(root.clone()), obj, 0);
    }
}

/// A `Warning` header value as upstream writes it: code 299, no agent, the text quoted.
pub fn warning_header(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            // Header values must be visible ASCII; escape the rest as Go's strconv.Quote.
            c if (' '..='~').contains(&c) => quoted.push(c),
            c => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
        }
    }
    quoted.push('"');
    format!("299 - {quoted}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::builtin()
    }

    #[test]
    fn v2_has_every_kind_with_its_gvk() {
        let catalog = catalog();
        let doc: Value = serde_json::from_slice(&catalog.openapi.v2_json(&catalog).bytes).unwrap();
        let defs = doc["definitions"].as_object().unwrap();
        for def in catalog.all() {
            let found = defs.values().any(|s| {
                s["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|l| l.contains(&gvk(&def.group, &def.version, &def.kind)))
            });
            assert!(
                found,
                "{} {} has no definition",
                def.api_version(),
                def.kind
            );
        }
        let pod = &defs["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "kind": "Pod", "version": "v1"}])
        );
        assert_eq!(
            pod["properties"]["spec"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.PodSpec"
        );
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-action"], "patch");
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for wanted in ["fieldValidation", "fieldManager", "dryRun"] {
            assert!(names.contains(&wanted), "{names:?}");
        }
    }

    #[test]
    fn create_only_kinds_have_only_a_post() {
        let catalog = catalog();
        let doc: Value = serde_json::from_slice(&catalog.openapi.v2_json(&catalog).bytes).unwrap();
        let path = &doc["paths"]["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"];
        let methods: Vec<&str> = path
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "parameters")
            .collect();
        assert_eq!(methods, vec!["post"], "{path}");
        assert!(
            doc["paths"]
                .get("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/{name}")
                .is_none()
        );
        assert!(
            doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]
                .get("delete")
                .is_some()
        );
    }

    #[test]
    fn v3_documents_per_group_version() {
        let catalog = catalog();
        let docs = catalog.openapi.v3(&catalog);
        let index: Value = serde_json::from_slice(&docs.index).unwrap();
        let mut expected: Vec<String> = catalog
            .all()
            .iter()
            .map(|d| gv_path(&d.group, &d.version))
            .collect();
        expected.sort();
        expected.dedup();
        let listed: Vec<String> = index["paths"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(listed, expected);
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
        let apps: Value = serde_json::from_slice(&docs.docs["apis/apps/v1"].bytes).unwrap();
        let schemas = apps["components"]["schemas"].as_object().unwrap();
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert_eq!(
            deployment["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        // Every reference resolves within the document.
        let mut refs = Vec::new();
        collect_refs(&apps, &mut refs);
        for r in refs {
            assert!(schemas.contains_key(&r), "{r} missing");
        }
        let patch =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        // Core kinds do not leak into other groups' documents.
        assert!(!schemas.contains_key("io.k8s.api.core.v1.Service"));
    }

    #[test]
    fn documents_follow_catalog_changes() {
        let catalog = catalog();
        let before = catalog.openapi.v3(&catalog);
        assert!(!before.docs.contains_key("apis/stable.example.com/v1"));
        let mut def = ResourceDef::new("stable.example.com", "v1", "CronTab", "crontabs", true);
        def.openapi_schema = Some(json!({
            "type": "object",
            "properties": { "spec": { "type": "object", "properties": { "cronSpec": { "type": "string" } } } },
        }));
        catalog.upsert(def);
        let after = catalog.openapi.v3(&catalog);
        let doc: Value =
            serde_json::from_slice(&after.docs["apis/stable.example.com/v1"].bytes).unwrap();
        let schema = &doc["components"]["schemas"]["com.example.stable.v1.CronTab"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["kind"],
            "CronTab"
        );
        let crontab = catalog
            .lookup("stable.example.com", "v1", "crontabs")
            .unwrap();
        let obj = json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "x"}, "spec": {"cronSpec": "*", "image": "x"}});
        let warnings =
            validate_fields(&catalog, &crontab, None, &obj, FieldValidation::Warn).unwrap();
        assert_eq!(warnings, [r#"unknown field "spec.image""#]);
    }

    #[test]
    fn field_validation_modes() {
        let catalog = catalog();
        let def = catalog.lookup("apps", "v1", "deployments").unwrap();
        let raw = br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"a":"b"}},
            "spec":{"replicas":1,"replicas":2,"foo":1,"selector":{"matchLabels":{"a":"b"}},
            "template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i","bogus":true,"resources":{"limits":{"cpu":"1"}}}]}}}}"#;
        let obj: Value = serde_json::from_slice(raw).unwrap();
        let warnings =
            validate_fields(&catalog, &def, Some(raw), &obj, FieldValidation::Warn).unwrap();
        assert_eq!(
            warnings,
            [
                r#"unknown field "spec.foo""#,
                r#"unknown field "spec.template.spec.containers[0].bogus""#,
                r#"duplicate field "spec.replicas""#,
            ]
        );
        let err =
            validate_fields(&catalog, &def, Some(raw), &obj, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.starts_with(r#"Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: unknown field "spec.foo", "#), "{}", err.message);
        assert!(
            validate_fields(&catalog, &def, Some(raw), &obj, FieldValidation::Ignore)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            FieldValidation::parse(None, "CreateOptions").unwrap(),
            FieldValidation::Warn
        );
        assert_eq!(
            FieldValidation::parse(Some("bogus"), "CreateOptions")
                .unwrap_err()
                .code,
            422
        );
        // CRD schemas keep arbitrary JSON under x-kubernetes-preserve-unknown-fields.
        let crd = catalog
            .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .unwrap();
        let obj = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "a.b"},
            "spec": {"group": "b", "names": {"plural": "a", "kind": "A"}, "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "default": {"any": {"x": 1}}, "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}});
        assert!(
            validate_fields(&catalog, &crd, None, &obj, FieldValidation::Strict)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn warning_headers_quote_like_go() {
        assert_eq!(
            warning_header(r#"unknown field "spec.foo""#),
            r#"299 - "unknown field \"spec.foo\"""#
        );
        assert_eq!(warning_header("é"), r#"299 - "\u00e9""#);
    }

    #[test]
    fn protobuf_form_is_built() {
        let catalog = catalog();
        let doc = catalog.openapi.v2_proto(&catalog);
        assert!(doc.bytes.len() > 100_000);
        assert_eq!(&doc.bytes[..5], &[0x0a, 3, b'2', b'.', b'0']);
    }
}
