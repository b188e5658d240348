//! Resource kinds described as data.
//!
//! Every kind the server serves — built-in or, later, custom — is one [`ResourceDef`]: its
//! group, version, names, scope, subresources, table columns, selectable fields and the hooks
//! that default and validate it. The registry writes each verb once and consults this
//! description; nothing else in the server names a particular kind, except the few lifecycle
//! rules Kubernetes itself hard-codes (namespaces, pod graceful deletion).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;

pub mod builtin;
pub mod defaults;
pub mod printers;
pub mod validation;

/// A subresource a kind offers besides its main endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: writes change only `.status`; the main endpoint ignores `.status`.
    Status,
    /// `/scale`: an `autoscaling/v1` Scale view of `.spec.replicas`.
    Scale,
    /// `/finalize` on namespaces: writes change only `.spec.finalizers`.
    Finalize,
    /// `/binding` on pods: binds a pod to a node.
    Binding,
    /// `/eviction` on pods.
    Eviction,
    /// `/log`, `/exec`, `/attach`, `/portforward` on pods: served by the pod's node, through
    /// the API server (`proxy.rs`). Pods do not offer `attach` yet: the agent's runtimes cannot
    /// attach to a container's own streams.
    Log,
    Exec,
    Attach,
    PortForward,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Finalize => "finalize",
            Subresource::Binding => "binding",
            Subresource::Eviction => "eviction",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "status" => Subresource::Status,
            "scale" => Subresource::Scale,
            "finalize" => Subresource::Finalize,
            "binding" => Subresource::Binding,
            "eviction" => Subresource::Eviction,
            "log" => Subresource::Log,
            "exec" => Subresource::Exec,
            "attach" => Subresource::Attach,
            "portforward" => Subresource::PortForward,
            _ => return None,
        })
    }

    /// Verbs as discovery lists them, and the kind its responses carry.
    pub fn discovery(
        self,
    ) -> (
        &'static [&'static str],
        Option<(&'static str, &'static str, &'static str)>,
    ) {
        match self {
            Subresource::Status => (&["get", "patch", "update"], None),
            Subresource::Scale => (
                &["get", "patch", "update"],
                Some(("autoscaling", "v1", "Scale")),
            ),
            Subresource::Finalize => (&["update"], None),
            Subresource::Binding => (&["create"], Some(("", "v1", "Binding"))),
            Subresource::Eviction => (&["create"], Some(("policy", "v1", "Eviction"))),
            Subresource::Log => (&["get"], Some(("", "v1", "Pod"))),
            Subresource::Exec => (&["create", "get"], Some(("", "v1", "PodExecOptions"))),
            Subresource::Attach => (&["create", "get"], Some(("", "v1", "PodAttachOptions"))),
            Subresource::PortForward => (
                &["create", "get"],
                Some(("", "v1", "PodPortForwardOptions")),
            ),
        }
    }
}

/// How a table cell is computed from an object.
#[derive(Clone)]
pub enum CellSource {
    /// The object's name.
    Name,
    /// Time since `metadata.creationTimestamp`, as kubectl prints it (`5m`, `2d3h`).
    Age,
    /// A simple JSONPath such as `.spec.replicas` or `.status.conditions[?(@.type=="Ready")].status`.
    Path(String),
    /// Computed by a printer function (the built-in kinds' richer columns).
    Printer(fn(&Value) -> Value),
}

/// One table column (`kubectl get` output), as in `metav1.TableColumnDefinition`.
#[derive(Clone)]
pub struct Column {
    pub name: String,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean`, `date`.
    pub type_: &'static str,
    /// OpenAPI format hint: `name` for the name column, otherwise usually empty.
    pub format: &'static str,
    pub description: String,
    /// 0 is shown by default; 1 only with `-o wide`.
    pub priority: i32,
    pub source: CellSource,
}

impl Column {
    pub fn new(name: &str, type_: &'static str, priority: i32, source: CellSource) -> Self {
        Column {
            name: name.to_string(),
            type_,
            format: "",
            description: String::new(),
            priority,
            source,
        }
    }

    pub fn name() -> Self {
        Column {
            name: "Name".into(),
            type_: "string",
            format: "name",
            description: "Name must be unique within a namespace. Cannot be updated.".into(),
            priority: 0,
            source: CellSource::Name,
        }
    }

    pub fn age() -> Self {
        Column {
            name: "Age".into(),
            type_: "string",
            format: "",
            description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
            priority: 0,
            source: CellSource::Age,
        }
    }

    pub fn printer(name: &str, type_: &'static str, priority: i32, f: fn(&Value) -> Value) -> Self {
        Column::new(name, type_, priority, CellSource::Printer(f))
    }

    pub fn path(name: &str, type_: &'static str, priority: i32, path: &str) -> Self {
        Column::new(name, type_, priority, CellSource::Path(path.to_string()))
    }
}

/// A field error found by validation, reported as a `Status` cause (422 Invalid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueDuplicate`,
    /// `FieldValueForbidden`, `FieldValueTooLong`, `FieldValueTypeInvalid`.
    pub reason: &'static str,
    /// The field path, e.g. `metadata.name` or `spec.containers[0].image`.
    pub field: String,
    /// The message as upstream prints it after the field, e.g. `Required value`.
    pub message: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }

    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {shown}: {detail}"),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                quoted.join(", ")
            ),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value}"),
        }
    }

    /// The text upstream prints for the whole error: `field: message`.
    pub fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// Checks that an object decodes as the kind's typed form, catching wrong JSON types
/// (`"replicas": "three"`) the way upstream's decoder does (400 BadRequest).
pub type DecodeCheck = fn(&Value) -> Result<(), String>;
/// Fills in defaults, as upstream's defaulting functions do, before validation.
pub type Defaulter = fn(&mut Value);
/// Validates a new object (`old` is `None`) or an update. Metadata is validated generically.
pub type Validator = fn(new: &Value, old: Option<&Value>) -> Vec<FieldError>;

/// Answers a create of a resource that is never stored (access reviews): given the request's
/// namespace and the decoded body, returns the object to send back.
pub type VirtualCreate =
    fn(namespace: Option<&str>, body: Value) -> crate::errors::ApiResult<Value>;

/// The verbs of an ordinary resource's main endpoint, as discovery lists them.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Adds a kind's schema to an OpenAPI generator and returns a reference to it; set by
/// [`ResourceDef::typed`] so that published schemas come from the same types as decoding.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

fn subschema<T: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    generator.subschema_for::<T>()
}

/// Decodes `value` as `T` to check its JSON types, without copying it.
pub fn decode_as<T: serde::de::DeserializeOwned>(value: &Value) -> Result<(), String> {
    T::deserialize(value).map(|_| ()).map_err(|e| e.to_string())
}

/// Where a kind's objects are kept when another kind's storage holds them (an object served
/// under two groups, like `events` in core/v1 and events.k8s.io/v1).
#[derive(Clone)]
pub struct SharedStorage {
    /// The group of the resource whose storage this one uses.
    pub group: &'static str,
    /// Converts an object from this kind's form to the stored form.
    pub to_storage: fn(Value) -> Value,
    /// Converts a stored object to this kind's form.
    pub from_storage: fn(Value) -> Value,
}

/// One served resource: a kind at one group-version.
#[derive(Clone)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Plural resource name, as in the URL.
    pub plural: String,
    pub singular: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub subresources: Vec<Subresource>,
    /// Table columns; the name column comes first. Empty means upstream's default (Name, Age).
    pub columns: Vec<Column>,
    /// Field paths usable in field selectors besides `metadata.name` and `metadata.namespace`.
    pub selectable_fields: Vec<String>,
    /// Whether `metadata.generation` is tracked (it moves on spec changes).
    pub tracks_generation: bool,
    /// Whether names must be DNS-1123 labels (namespaces, services) rather than subdomains.
    pub name_is_label: bool,
    /// Whether any URL path segment is a valid name (RBAC kinds: `system:discovery`).
    pub path_segment_names: bool,
    pub decode_check: Option<DecodeCheck>,
    pub defaulter: Option<Defaulter>,
    pub validator: Option<Validator>,
    pub shared_storage: Option<SharedStorage>,
    /// Served but not the preferred version of its group (discovery lists the preferred first).
    pub preferred: bool,
    /// The kind's OpenAPI schema, from its Rust type (built-in kinds).
    pub schema: Option<SchemaFn>,
    /// The kind's OpenAPI v3 schema as JSON (custom resources, from their definition's
    /// `openAPIV3Schema`). Takes precedence over `schema` when both are set.
    pub openapi_schema: Option<Value>,
    /// For custom resources: the structural schema, storage version and scale paths.
    pub custom: Option<Arc<crate::crd::CustomResource>>,
    /// The verbs the main endpoint serves (discovery lists these); [`ALL_VERBS`] by default.
    pub verbs: &'static [&'static str],
    /// Set for create-only resources that are answered rather than stored.
    pub virtual_create: Option<VirtualCreate>,
}

impl ResourceDef {
    /// A plain namespaced or cluster-scoped resource with default columns.
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        ResourceDef {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: kind.to_ascii_lowercase(),
            list_kind: format!("{kind}List"),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            subresources: Vec::new(),
            columns: Vec::new(),
            selectable_fields: Vec::new(),
            tracks_generation: false,
            name_is_label: false,
            path_segment_names: false,
            decode_check: None,
            defaulter: None,
            validator: None,
            shared_storage: None,
            preferred: true,
            schema: None,
            openapi_schema: None,
            custom: None,
            verbs: ALL_VERBS,
            virtual_create: None,
        }
    }

    pub fn short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn subresources(mut self, subresources: &[Subresource]) -> Self {
        self.subresources = subresources.to_vec();
        self
    }

    pub fn columns(mut self, columns: Vec<Column>) -> Self {
        self.columns = columns;
        self
    }

    pub fn fields(mut self, fields: &[&str]) -> Self {
        self.selectable_fields = fields.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn generation(mut self) -> Self {
        self.tracks_generation = true;
        self
    }

    pub fn label_names(mut self) -> Self {
        self.name_is_label = true;
        self
    }

    /// The kind's Rust type: decoding checks and the published OpenAPI schema both use it.
    pub fn typed<T: serde::de::DeserializeOwned + schemars::JsonSchema>(mut self) -> Self {
        self.decode_check = Some(decode_as::<T>);
        self.schema = Some(subschema::<T>);
        self
    }

    pub fn defaulter(mut self, f: Defaulter) -> Self {
        self.defaulter = Some(f);
        self
    }

    pub fn validator(mut self, f: Validator) -> Self {
        self.validator = Some(f);
        self
    }

    pub fn shared_storage(mut self, storage: SharedStorage) -> Self {
        self.shared_storage = Some(storage);
        self
    }

    /// Names are checked only as URL path segments, as upstream does for RBAC kinds.
    pub fn path_segment_names(mut self) -> Self {
        self.path_segment_names = true;
        self
    }

    /// The rule `metadata.name` is validated with.
    pub fn name_rule(&self) -> validation::NameRule {
        if self.path_segment_names {
            validation::NameRule::PathSegment
        } else if self.name_is_label {
            validation::NameRule::Label
        } else {
            validation::NameRule::Subdomain
        }
    }

    /// A create-only resource answered by `f` and never stored.
    pub fn virtual_create(mut self, f: VirtualCreate) -> Self {
        self.verbs = &["create"];
        self.virtual_create = Some(f);
        self
    }

    pub fn not_preferred(mut self) -> Self {
        self.preferred = false;
        self
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// The storage group segment of keys: the group, or `core` for the legacy group.
    fn storage_group(&self) -> &str {
        let group = self
            .shared_storage
            .as_ref()
            .map(|s| s.group)
            .unwrap_or(&self.group);
        if group.is_empty() { "core" } else { group }
    }

    /// The key prefix under which every object of this resource is stored.
    pub fn storage_prefix(&self) -> String {
        format!("/registry/{}/{}/", self.storage_group(), self.plural)
    }

    /// The key prefix for one namespace (or all objects, for cluster-scoped resources).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{}/", self.storage_prefix(), ns),
            _ => self.storage_prefix(),
        }
    }

    /// The key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{}/{}", self.storage_prefix(), ns, name),
            _ => format!("{}{}", self.storage_prefix(), name),
        }
    }

    /// The table columns, with upstream's defaults when the kind declares none.
    pub fn table_columns(&self) -> Vec<Column> {
        if self.columns.is_empty() {
            printers::default_columns()
        } else {
            self.columns.clone()
        }
    }
}

/// One version of a group and the resources served at it.
pub type GroupVersion = (String, Vec<Arc<ResourceDef>>);

/// Every resource the server serves, looked up by group-version and plural (or any alias).
#[derive(Default)]
pub struct Catalog {
    defs: RwLock<Vec<Arc<ResourceDef>>>,
    /// Moves on every change, so derived data (the OpenAPI documents) knows when to rebuild.
    generation: AtomicU64,
    /// The OpenAPI documents derived from this catalog, built on first request.
    pub openapi: crate::openapi::Cache,
}

impl Catalog {
    pub fn new(defs: Vec<ResourceDef>) -> Self {
        Catalog {
            defs: RwLock::new(defs.into_iter().map(Arc::new).collect()),
            ..Catalog::default()
        }
    }

    /// The built-in Kubernetes kinds.
    pub fn builtin() -> Self {
        Catalog::new(builtin::resources())
    }

    /// A counter that changes whenever a resource is added, replaced or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn all(&self) -> Vec<Arc<ResourceDef>> {
        self.defs.read().expect("catalog lock").clone()
    }

    /// The resource served at `group`/`version` under the plural name `plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .read()
            .expect("catalog lock")
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }

    /// The resource for a kind at a group-version (to check a body's `kind`).
    pub fn lookup_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .read()
            .expect("catalog lock")
            .iter()
            .find(|d| d.group == group && d.version == version && d.kind == kind)
            .cloned()
    }

    /// The resource whose objects live under storage key `key` (for decoding cached objects).
    pub fn for_key(&self, key: &str) -> Option<Arc<ResourceDef>> {
        let rest = key.strip_prefix("/registry/")?;
        let mut parts = rest.splitn(3, '/');
        let group = parts.next()?;
        let plural = parts.next()?;
        let group = if group == "core" { "" } else { group };
        self.defs
            .read()
            .expect("catalog lock")
            .iter()
            .find(|d| {
                d.plural == plural && d.group == group && d.shared_storage.is_none() && d.preferred
            })
            .cloned()
    }

    /// Group → versions (preferred first) → resources, in a stable order for discovery.
    pub fn groups(&self) -> Vec<(String, Vec<GroupVersion>)> {
        let defs = self.all();
        let mut order: Vec<String> = Vec::new();
        let mut by_group: BTreeMap<String, Vec<GroupVersion>> = BTreeMap::new();
        for def in defs {
            if !order.contains(&def.group) {
                order.push(def.group.clone());
            }
            let versions = by_group.entry(def.group.clone()).or_default();
            match versions.iter_mut().find(|(v, _)| *v == def.version) {
                Some((_, list)) => list.push(def.clone()),
                None => {
                    if def.preferred {
                        versions.insert(0, (def.version.clone(), vec![def.clone()]));
                    } else {
                        versions.push((def.version.clone(), vec![def.clone()]));
                    }
                }
            }
        }
        order
            .into_iter()
            .map(|g| {
                let versions = by_group.remove(&g).unwrap_or_default();
                (g, versions)
            })
            .collect()
    }

    /// Adds or replaces a resource (custom resources arrive this way).
    pub fn upsert(&self, def: ResourceDef) {
        let mut defs = self.defs.write().expect("catalog lock");
        defs.retain(|d| {
            !(d.group == def.group && d.version == def.version && d.plural == def.plural)
        });
        defs.push(Arc::new(def));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes every version of a resource.
    pub fn remove(&self, group: &str, plural: &str) {
        self.defs
            .write()
            .expect("catalog lock")
            .retain(|d| !(d.group == group && d.plural == plural));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
