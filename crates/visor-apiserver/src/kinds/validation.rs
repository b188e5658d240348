//! Validation of the built-in kinds, as upstream's `pkg/apis/*/validation` packages do it.
//!
//! Every check reports a [`FieldError`] whose field path and message are upstream's, so a
//! `kubectl` user sees the same `The Pod "x" is invalid: …` text kube-apiserver would print.
//! The string validators ([`dns1123_label`], [`qualified_name`], …) return bare messages, as
//! apimachinery's `IsXxx` functions do; callers attach the field path.
//!
//! Metadata is validated generically by [`validate_object_meta`] (the registry calls it for
//! every object); the per-kind validators check only what the kind adds, plus the metadata
//! of embedded pod templates, which no generic pass sees.
//!
//! Objects are the JSON form of the v1 API after defaulting, so fields upstream's defaulting
//! always sets (restart policies, protocols, strategies) are present when the checks run.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde_json::{Map, Value};

use super::FieldError;

// ---------------------------------------------------------------------------------------
// String validators (k8s.io/apimachinery/pkg/util/validation)
// ---------------------------------------------------------------------------------------

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_FMT: &str =
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MAX: usize = 63;
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_KEY_ERR: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";
const PERCENT_FMT: &str = "[0-9]+%";
const PERCENT_ERR: &str =
    "a valid percent string must be a numeric string followed by an ending '%'";

/// The total size of `metadata.annotations` (keys plus values) upstream accepts.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// The total size of a ConfigMap's or Secret's data upstream accepts.
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;

const IS_NEGATIVE: &str = "must be greater than or equal to 0";
const IS_IMMUTABLE: &str = "field is immutable";

/// Upstream's `RegexError`: the message, examples and the regular expression used.
///
/// The examples are joined as upstream joins them, double space before `or` included,
/// because users compare these strings with what kube-apiserver prints.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{example}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, anchored.
fn matches_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_lower_alnum(b[0])
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

fn matches_dns_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns_label)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, anchored.
fn matches_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Upstream's `IsDNS1123Label`.
pub fn dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        errs.push(max_len_error(DNS1123_LABEL_MAX));
    }
    if !matches_dns_label(value) {
        if matches_dns_subdomain(value) {
            // A valid subdomain that is not a label can only be failing on its dots.
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// Upstream's `IsDNS1123Subdomain`.
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX));
    }
    if !matches_dns_subdomain(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// Upstream's `ValidatePathSegmentName`: the rule for names that only have to be usable as
/// one URL path segment (RBAC roles and bindings, for instance). `prefix` is true when
/// checking a `generateName`, which may still be completed.
pub fn path_segment_name(value: &str, prefix: bool) -> Vec<String> {
    if !prefix {
        for illegal in [".", ".."] {
            if value == illegal {
                return vec![format!("may not be '{illegal}'")];
            }
        }
    }
    ["/", "%"]
        .iter()
        .filter(|c| value.contains(**c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

/// Upstream's `IsQualifiedName`: an optional DNS subdomain prefix and `/`, then a name.
pub fn qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_ERR,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > QUALIFIED_NAME_MAX {
        errs.push(format!("name part {}", max_len_error(QUALIFIED_NAME_MAX)));
    }
    if !matches_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Upstream's `IsValidLabelValue`.
pub fn label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX {
        errs.push(max_len_error(LABEL_VALUE_MAX));
    }
    if !value.is_empty() && !matches_qualified_name_part(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// Upstream's `IsConfigMapKey`, used for ConfigMap and Secret keys.
pub fn config_map_key(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX));
    }
    let charset_ok = !value.is_empty()
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if !charset_ok {
        errs.push(regex_error(
            CONFIG_KEY_ERR,
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    // Keys become file names in volumes; these would escape the directory.
    if value == "." {
        errs.push("must not be '.'".to_string());
    } else if value == ".." {
        errs.push("must not be '..'".to_string());
    } else if value.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

/// Upstream's `IsValidPortNum`.
pub fn port_num(port: i64) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec![inclusive_range_error(1, 65535)]
    }
}

/// Upstream's `IsValidPortName` (IANA service names).
pub fn port_name(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(max_len_error(15));
    }
    if port.is_empty()
        || !port
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !port.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

fn inclusive_range_error(lo: i64, hi: i64) -> String {
    format!("must be between {lo} and {hi}, inclusive")
}

/// How a kind's object names are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label (namespaces, services).
    Label,
    /// Any single URL path segment (RBAC kinds).
    PathSegment,
}

impl NameRule {
    /// Upstream's name validators: a `generateName` (`prefix`) is checked as if its trailing
    /// dash were followed by the random suffix.
    pub fn check(self, name: &str, prefix: bool) -> Vec<String> {
        let masked;
        let name = if prefix && self != NameRule::PathSegment && name.ends_with('-') {
            masked = format!("{}a", &name[..name.len() - 1]);
            masked.as_str()
        } else {
            name
        };
        match self {
            NameRule::Subdomain => dns1123_subdomain(name),
            NameRule::Label => dns1123_label(name),
            NameRule::PathSegment => path_segment_name(name, prefix),
        }
    }
}

// ---------------------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------------------

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn obj<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

fn int_of(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

fn nonnegative(v: &Value, key: &str, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = int_of(v, key)
        && n < 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.{key}"),
            &Value::from(n),
            IS_NEGATIVE,
        ));
    }
}

/// An `Invalid value` error whose value is shown as upstream's Go formatting shows it
/// (maps, selectors, structs), which JSON rendering cannot reproduce.
fn invalid_shown(field: impl Into<String>, shown: &str, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {shown}: {detail}"),
    }
}

fn not_found(field: impl Into<String>, value: &str) -> FieldError {
    FieldError {
        reason: "FieldValueNotFound",
        field: field.into(),
        message: format!("Not found: {value:?}"),
    }
}

fn too_long(field: impl Into<String>, max: usize) -> FieldError {
    FieldError {
        reason: "FieldValueTooLong",
        field: field.into(),
        message: format!("Too long: may not be more than {max} bytes"),
    }
}

/// Go's `%#v` of a `map[string]string`, as upstream prints label maps in messages.
fn go_string_map(m: Option<&Map<String, Value>>) -> String {
    match m {
        None => "map[string]string(nil)".to_string(),
        Some(m) => {
            let mut pairs: Vec<(&String, &str)> = m
                .iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or("")))
                .collect();
            pairs.sort();
            let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
            format!("map[string]string{{{}}}", inner.join(", "))
        }
    }
}

/// Go's `%#v` of a `metav1.LabelSelector`, as upstream prints selectors in messages.
fn go_label_selector(sel: &Value) -> String {
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(list) => {
            let items: Vec<String> = list
                .iter()
                .map(|e| {
                    let values = match e.get("values").and_then(Value::as_array) {
                        None => "[]string(nil)".to_string(),
                        Some(vs) => {
                            let vs: Vec<String> = vs
                                .iter()
                                .map(|v| format!("{:?}", v.as_str().unwrap_or("")))
                                .collect();
                            format!("[]string{{{}}}", vs.join(", "))
                        }
                    };
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:{values}}}",
                        str_of(e, "key"),
                        str_of(e, "operator")
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
        go_string_map(obj(sel, "matchLabels"))
    )
}

/// Go's `%#v` of an `intstr.IntOrString`.
fn go_int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => format!("intstr.IntOrString{{Type:1, IntVal:0, StrVal:{s:?}}}"),
        other => format!(
            "intstr.IntOrString{{Type:0, IntVal:{}, StrVal:\"\"}}",
            other.as_i64().unwrap_or(0)
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Object metadata
// ---------------------------------------------------------------------------------------

/// Validates `metadata` as upstream's `ValidateObjectMeta` does, with names checked as
/// DNS-1123 labels (`name_is_label`) or subdomains.
pub fn validate_object_meta(
    meta: &Value,
    namespaced: bool,
    name_is_label: bool,
) -> Vec<FieldError> {
    let rule = if name_is_label {
        NameRule::Label
    } else {
        NameRule::Subdomain
    };
    validate_object_meta_with(meta, namespaced, rule)
}

/// Validates `metadata` with an explicit name rule.
///
/// Caveat: like upstream, a namespace on a cluster-scoped object is an error here; upstream's
/// registry clears it before validation, so callers should do the same.
pub fn validate_object_meta_with(
    meta: &Value,
    namespaced: bool,
    rule: NameRule,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let generate_name = str_of(meta, "generateName");
    if !generate_name.is_empty() {
        for msg in rule.check(generate_name, true) {
            errs.push(FieldError::invalid(
                "metadata.generateName",
                &Value::from(generate_name),
                &msg,
            ));
        }
    }
    let name = str_of(meta, "name");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for msg in rule.check(name, false) {
            errs.push(FieldError::invalid(
                "metadata.name",
                &Value::from(name),
                &msg,
            ));
        }
    }
    let namespace = str_of(meta, "namespace");
    if namespaced {
        if namespace.is_empty() {
            errs.push(FieldError::required("metadata.namespace", ""));
        } else {
            for msg in dns1123_label(namespace) {
                errs.push(FieldError::invalid(
                    "metadata.namespace",
                    &Value::from(namespace),
                    &msg,
                ));
            }
        }
    } else if !namespace.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    nonnegative(meta, "generation", "metadata", &mut errs);
    validate_labels(obj(meta, "labels"), "metadata.labels", &mut errs);
    validate_annotations(obj(meta, "annotations"), "metadata.annotations", &mut errs);
    validate_owner_references(arr(meta, "ownerReferences"), &mut errs);
    validate_finalizers(arr(meta, "finalizers"), &mut errs);
    errs
}

/// Upstream's `ValidateObjectMetaUpdate`: identity fields may not change; labels and the
/// rest are validated again.
pub fn validate_object_meta_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for key in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        let (n, o) = (get(new, key), get(old, key));
        if n != o {
            errs.push(FieldError::invalid(
                format!("metadata.{key}"),
                n,
                IS_IMMUTABLE,
            ));
        }
    }
    nonnegative(new, "generation", "metadata", &mut errs);
    validate_labels(obj(new, "labels"), "metadata.labels", &mut errs);
    validate_annotations(obj(new, "annotations"), "metadata.annotations", &mut errs);
    validate_owner_references(arr(new, "ownerReferences"), &mut errs);
    validate_finalizers(arr(new, "finalizers"), &mut errs);
    errs
}

/// Upstream's `ValidateLabels`: keys are qualified names, values label values.
pub fn validate_labels(
    labels: Option<&Map<String, Value>>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    for (k, v) in labels.into_iter().flatten() {
        for msg in qualified_name(k) {
            errs.push(FieldError::invalid(path, &Value::from(k.as_str()), &msg));
        }
        let value = v.as_str().unwrap_or("");
        for msg in label_value(value) {
            errs.push(FieldError::invalid(path, &Value::from(value), &msg));
        }
    }
}

/// Upstream's `ValidateAnnotations`: keys are case-insensitive qualified names and the
/// whole map is limited to 256 KiB.
pub fn validate_annotations(
    annotations: Option<&Map<String, Value>>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let Some(annotations) = annotations else {
        return;
    };
    let mut total = 0;
    for (k, v) in annotations {
        for msg in qualified_name(&k.to_ascii_lowercase()) {
            errs.push(FieldError::invalid(path, &Value::from(k.as_str()), &msg));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
}

fn validate_owner_references(refs: &[Value], errs: &mut Vec<FieldError>) {
    let path = "metadata.ownerReferences";
    let mut first_controller: Option<String> = None;
    for r in refs {
        let api_version = str_of(r, "apiVersion");
        // The version is what follows the last slash; the legacy group has no slash.
        let version = api_version.rsplit('/').next().unwrap_or("");
        if version.is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.apiVersion"),
                &Value::from(api_version),
                "version must not be empty",
            ));
        }
        for key in ["kind", "name", "uid"] {
            let v = str_of(r, key);
            if v.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{path}.{key}"),
                    &Value::from(v),
                    "must not be empty",
                ));
            }
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            let current = format!("{}/{}", str_of(r, "kind"), str_of(r, "name"));
            match &first_controller {
                Some(first) => errs.push(invalid_shown(
                    path,
                    "[]v1.OwnerReference{...}",
                    &format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {current}"
                    ),
                )),
                None => first_controller = Some(current),
            }
        }
    }
}

fn validate_finalizers(finalizers: &[Value], errs: &mut Vec<FieldError>) {
    let names: Vec<&str> = finalizers.iter().filter_map(Value::as_str).collect();
    for name in &names {
        for msg in qualified_name(name) {
            errs.push(FieldError::invalid(
                "metadata.finalizers",
                &Value::from(*name),
                &msg,
            ));
        }
    }
    if names.contains(&"orphan") && names.contains(&"foregroundDeletion") {
        let shown = format!(
            "[]string{{{}}}",
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        errs.push(invalid_shown(
            "metadata.finalizers",
            &shown,
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
}

// ---------------------------------------------------------------------------------------
// Quantities (k8s.io/apimachinery/pkg/api/resource)
// ---------------------------------------------------------------------------------------

/// The message upstream gives for a string that is not a quantity at all.
pub const QUANTITY_FORMAT_ERR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
const QUANTITY_SUFFIX_ERR: &str = "unable to parse quantity's suffix";

/// How a quantity was written, which decides how it is printed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantityFormat {
    /// `Ki`, `Mi`, … (powers of 1024).
    BinarySI,
    /// No suffix, or `n`, `u`, `m`, `k`, `M`, … (powers of 1000).
    DecimalSI,
    /// `1e3`, `2E-3`.
    DecimalExponent,
}

/// A parsed quantity, exact to the nano-unit (upstream's smallest representable amount), so
/// CPU millicores and byte counts compare exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity {
    /// The value times 10⁹.
    pub nanos: i128,
    pub format: QuantityFormat,
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

/// Quantities beyond this are clamped, as upstream clamps rather than failing.
const QUANTITY_LIMIT: i128 = i128::MAX / 1_000_000;

impl Quantity {
    /// The value in thousandths (millicores for CPU), rounded up as upstream's `MilliValue`.
    pub fn milli_value(&self) -> i128 {
        ceil_div(self.nanos, 1_000_000)
    }

    /// The value in whole units, rounded up as upstream's `Value`.
    pub fn value(&self) -> i128 {
        ceil_div(self.nanos, 1_000_000_000)
    }

    /// The canonical text upstream serializes (`Quantity.String()`): `1500m`, `2`, `1Gi`, `1536Mi`.
    pub fn canonical(&self) -> String {
        if self.nanos == 0 {
            return "0".to_string();
        }
        let format = match self.format {
            QuantityFormat::BinarySI
                if self.nanos.abs() < 1024 * 1_000_000_000 || self.nanos % 1_000_000_000 != 0 =>
            {
                // Small or fractional binary amounts are shown in decimal, as upstream does.
                QuantityFormat::DecimalSI
            }
            f => f,
        };
        if format == QuantityFormat::BinarySI {
            let mut n = self.nanos / 1_000_000_000;
            let mut power = 0;
            while power < 6 && n % 1024 == 0 {
                n /= 1024;
                power += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
            return format!("{n}{suffix}");
        }
        // Strip factors of ten, then lower the exponent to a multiple of three.
        let mut mantissa = self.nanos;
        let mut exponent: i32 = -9;
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent += 1;
        }
        while exponent.rem_euclid(3) != 0 {
            mantissa *= 10;
            exponent -= 1;
        }
        let suffix = if format == QuantityFormat::DecimalExponent {
            if exponent == 0 {
                String::new()
            } else {
                format!("e{exponent}")
            }
        } else {
            match exponent {
                -9 => "n".into(),
                -6 => "u".into(),
                -3 => "m".into(),
                0 => String::new(),
                3 => "k".into(),
                6 => "M".into(),
                9 => "G".into(),
                12 => "T".into(),
                15 => "P".into(),
                18 => "E".into(),
                e => format!("e{e}"),
            }
        };
        format!("{mantissa}{suffix}")
    }
}

fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && a > 0 { q + 1 } else { q }
}

/// Parses a Kubernetes quantity (`100m`, `1.5Gi`, `1e3`, `+2k`), with upstream's errors.
///
/// Guarantees: the result is exact to 10⁻⁹; finer amounts round up (away from zero), as
/// upstream rounds them so that asking for "some" of a resource never yields none.
pub fn parse_quantity(s: &str) -> Result<Quantity, String> {
    if s.is_empty() {
        return Err(QUANTITY_FORMAT_ERR.to_string());
    }
    let b = s.as_bytes();
    let mut pos = 0;
    let mut negative = false;
    if let Some(&c) = b.first()
        && (c == b'+' || c == b'-')
    {
        negative = c == b'-';
        pos += 1;
    }
    let int_start = pos;
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    let int_part = &s[int_start..pos];
    let mut frac_part = "";
    if pos < b.len() && b[pos] == b'.' {
        pos += 1;
        let frac_start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        frac_part = &s[frac_start..pos];
    }
    let suffix_start = pos;
    while pos < b.len() && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if pos < b.len() && (b[pos] == b'-' || b[pos] == b'+') {
        pos += 1;
    }
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos != b.len() {
        return Err(QUANTITY_FORMAT_ERR.to_string());
    }
    let suffix = &s[suffix_start..];
    let (base2_power, base10_power, format) = match suffix {
        "" => (0, 0, QuantityFormat::DecimalSI),
        "n" => (0, -9, QuantityFormat::DecimalSI),
        "u" => (0, -6, QuantityFormat::DecimalSI),
        "m" => (0, -3, QuantityFormat::DecimalSI),
        "k" => (0, 3, QuantityFormat::DecimalSI),
        "M" => (0, 6, QuantityFormat::DecimalSI),
        "G" => (0, 9, QuantityFormat::DecimalSI),
        "T" => (0, 12, QuantityFormat::DecimalSI),
        "P" => (0, 15, QuantityFormat::DecimalSI),
        "E" => (0, 18, QuantityFormat::DecimalSI),
        "Ki" => (10, 0, QuantityFormat::BinarySI),
        "Mi" => (20, 0, QuantityFormat::BinarySI),
        "Gi" => (30, 0, QuantityFormat::BinarySI),
        "Ti" => (40, 0, QuantityFormat::BinarySI),
        "Pi" => (50, 0, QuantityFormat::BinarySI),
        "Ei" => (60, 0, QuantityFormat::BinarySI),
        other if other.len() > 1 && (other.starts_with('e') || other.starts_with('E')) => {
            let exp: i64 = other[1..]
                .parse()
                .map_err(|_| QUANTITY_SUFFIX_ERR.to_string())?;
            (
                0,
                exp.clamp(-1000, 1000) as i32,
                QuantityFormat::DecimalExponent,
            )
        }
        _ => return Err(QUANTITY_SUFFIX_ERR.to_string()),
    };
    // mantissa × 10^(power10) × 2^(power2), in nano-units: scale by 10⁹ first.
    let digits = format!("{int_part}{frac_part}");
    let mut mantissa: i128 = 0;
    let mut dropped_digits: i32 = 0;
    for d in digits.bytes() {
        match mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(d - b'0')))
        {
            Some(m) if m < QUANTITY_LIMIT => mantissa = m,
            // Past the representable range further digits only scale the value.
            _ => dropped_digits += 1,
        }
    }
    let mut power10 = base10_power + 9 - frac_part.len() as i32 + dropped_digits;
    let mut value = mantissa;
    for _ in 0..base2_power {
        value = value.saturating_mul(2).min(QUANTITY_LIMIT);
    }
    while power10 > 0 && value != 0 {
        value = value.saturating_mul(10).min(QUANTITY_LIMIT);
        power10 -= 1;
    }
    if power10 < 0 {
        let divisor = 10i128.checked_pow((-power10) as u32);
        value = match divisor {
            Some(d) => ceil_div(value, d),
            // Anything non-zero this small rounds up to the smallest amount.
            None => i128::from(value != 0),
        };
    }
    let format = if format == QuantityFormat::BinarySI && value < 1_000_000_000 && value > 0 {
        QuantityFormat::DecimalSI
    } else {
        format
    };
    Ok(Quantity {
        nanos: if negative { -value } else { value },
        format,
    })
}

/// The canonical form of a quantity string, or `None` if it does not parse.
pub fn canonical_quantity(s: &str) -> Option<String> {
    parse_quantity(s).ok().map(|q| q.canonical())
}

fn quantity_of(v: &Value) -> Result<Quantity, String> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => parse_quantity(&n.to_string()),
        _ => Err(QUANTITY_FORMAT_ERR.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------

/// Whether a `metav1.LabelSelector` selects `labels`. `None` if the selector is malformed.
/// An empty selector selects everything, as upstream's `LabelSelectorAsSelector` makes it.
pub fn selector_matches(selector: &Value, labels: Option<&Map<String, Value>>) -> Option<bool> {
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    for (k, v) in obj(selector, "matchLabels").into_iter().flatten() {
        if label(k) != v.as_str() {
            return Some(false);
        }
    }
    for e in arr(selector, "matchExpressions") {
        let key = str_of(e, "key");
        let values: Vec<&str> = arr(e, "values").iter().filter_map(Value::as_str).collect();
        let ok = match str_of(e, "operator") {
            "In" => label(key).is_some_and(|v| values.contains(&v)),
            "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
            "Exists" => label(key).is_some(),
            "DoesNotExist" => label(key).is_none(),
            _ => return None,
        };
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

fn validate_label_selector(sel: &Value, path: &str, errs: &mut Vec<FieldError>) {
    validate_labels(
        obj(sel, "matchLabels"),
        &format!("{path}.matchLabels"),
        errs,
    );
    for (i, e) in arr(sel, "matchExpressions").iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = arr(e, "values");
        let op = str_of(e, "operator");
        match op {
            "In" | "NotIn" if values.is_empty() => errs.push(FieldError::required(
                format!("{p}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::forbidden(
                format!("{p}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => errs.push(FieldError::invalid(
                format!("{p}.operator"),
                &Value::from(op),
                "not a valid selector operator",
            )),
        }
        let key = str_of(e, "key");
        for msg in qualified_name(key) {
            errs.push(FieldError::invalid(
                format!("{p}.key"),
                &Value::from(key),
                &msg,
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------

pub(crate) const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

/// Validates a Pod: its spec on create, and on update that only mutable fields changed.
pub fn pod(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_pod_spec(get(new, "spec"), "spec", &mut errs);
    if let Some(old) = old {
        validate_pod_spec_update(get(new, "spec"), get(old, "spec"), &mut errs);
    }
    errs
}

/// The fields upstream lets a pod update change, in its message's words.
const POD_UPDATABLE_FIELDS: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn validate_pod_spec_update(new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    // Copy the mutable fields from the old spec into the new one; whatever still differs
    // was an illegal change.
    let mut munged = new.clone();
    if let Some(m) = munged.as_object_mut() {
        for list in ["containers", "initContainers"] {
            let old_list = arr(old, list);
            if let Some(new_list) = m.get_mut(list).and_then(Value::as_array_mut)
                && new_list.len() == old_list.len()
            {
                for (n, o) in new_list.iter_mut().zip(old_list) {
                    if let Some(n) = n.as_object_mut() {
                        match o.get("image") {
                            Some(image) => n.insert("image".into(), image.clone()),
                            None => n.remove("image"),
                        };
                    }
                }
            }
        }
        let grace_from_negative = int_of(old, "terminationGracePeriodSeconds")
            .is_some_and(|g| g < 0)
            && int_of(new, "terminationGracePeriodSeconds") == Some(1);
        let mut copied = vec!["activeDeadlineSeconds", "tolerations"];
        if grace_from_negative {
            copied.push("terminationGracePeriodSeconds");
        }
        for key in copied {
            match old.get(key) {
                Some(v) => m.insert(key.into(), v.clone()),
                None => m.remove(key),
            };
        }
    }
    if munged != *old {
        let diff = spec_diff(old, &munged);
        errs.push(FieldError::forbidden(
            "spec",
            &format!("pod updates may not change fields other than {POD_UPDATABLE_FIELDS}\n{diff}"),
        ));
    }
    validate_only_added_tolerations(arr(new, "tolerations"), arr(old, "tolerations"), errs);
    if let (Some(o), n) = (
        int_of(old, "activeDeadlineSeconds"),
        int_of(new, "activeDeadlineSeconds"),
    ) {
        match n {
            None => errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &Value::Null,
                "must not update from a positive integer to nil value",
            )),
            Some(n) if n > o => errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &Value::from(n),
                "must be less than or equal to previous value",
            )),
            _ => {}
        }
    }
}

/// A short account of which top-level fields differ, in place of upstream's Go struct diff.
fn spec_diff(old: &Value, new: &Value) -> String {
    let empty = Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = String::new();
    for k in keys {
        let (ov, nv) = (o.get(k), n.get(k));
        if ov != nv {
            if let Some(ov) = ov {
                out.push_str(&format!("-   {k}: {ov}\n"));
            }
            if let Some(nv) = nv {
                out.push_str(&format!("+   {k}: {nv}\n"));
            }
        }
    }
    out
}

fn validate_only_added_tolerations(new: &[Value], old: &[Value], errs: &mut Vec<FieldError>) {
    for o in old {
        let found = new.iter().any(|n| {
            // tolerationSeconds may change; everything else must be kept.
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                match n.get("tolerationSeconds") {
                    Some(s) => m.insert("tolerationSeconds".into(), s.clone()),
                    None => m.remove("tolerationSeconds"),
                };
            }
            o == *n
        });
        if !found {
            errs.push(FieldError::forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            return;
        }
    }
}

/// Validates a pod spec found at `path` (`spec`, or `spec.template.spec` in a template).
fn validate_pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let volumes = validate_volumes(arr(spec, "volumes"), &format!("{path}.volumes"), errs);
    let mut names = HashSet::new();
    validate_containers(
        arr(spec, "initContainers"),
        &format!("{path}.initContainers"),
        &volumes,
        &mut names,
        true,
        errs,
    );
    let containers = arr(spec, "containers");
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    } else {
        validate_containers(
            containers,
            &format!("{path}.containers"),
            &volumes,
            &mut names,
            false,
            errs,
        );
    }
    match spec.get("restartPolicy").and_then(Value::as_str) {
        Some("Always" | "OnFailure" | "Never") => {}
        None | Some("") => errs.push(FieldError::required(format!("{path}.restartPolicy"), "")),
        Some(other) => errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            &Value::from(other),
            &["Always", "OnFailure", "Never"],
        )),
    }
    match spec.get("dnsPolicy").and_then(Value::as_str) {
        None | Some("ClusterFirst" | "ClusterFirstWithHostNet" | "Default" | "None") => {}
        Some(other) => errs.push(FieldError::not_supported(
            format!("{path}.dnsPolicy"),
            &Value::from(other),
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        )),
    }
    if let Some(n) = int_of(spec, "activeDeadlineSeconds")
        && !(1..=i64::from(i32::MAX)).contains(&n)
    {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            &Value::from(n),
            &inclusive_range_error(1, i64::from(i32::MAX)),
        ));
    }
    for (key, check) in [
        (
            "serviceAccountName",
            dns1123_subdomain as fn(&str) -> Vec<String>,
        ),
        ("nodeName", dns1123_subdomain),
        ("hostname", dns1123_label),
        ("subdomain", dns1123_label),
    ] {
        let v = str_of(spec, key);
        if !v.is_empty() {
            for msg in check(v) {
                errs.push(FieldError::invalid(
                    format!("{path}.{key}"),
                    &Value::from(v),
                    &msg,
                ));
            }
        }
    }
    validate_labels(
        obj(spec, "nodeSelector"),
        &format!("{path}.nodeSelector"),
        errs,
    );
    validate_tolerations(
        arr(spec, "tolerations"),
        &format!("{path}.tolerations"),
        errs,
    );
}

fn validate_tolerations(tolerations: &[Value], path: &str, errs: &mut Vec<FieldError>) {
    for (i, t) in tolerations.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let key = str_of(t, "key");
        if !key.is_empty() {
            for msg in qualified_name(key) {
                errs.push(FieldError::invalid(
                    format!("{p}.key"),
                    &Value::from(key),
                    &msg,
                ));
            }
        }
        let operator = str_of(t, "operator");
        if key.is_empty() && operator != "Exists" {
            errs.push(FieldError::invalid(
                format!("{p}.operator"),
                &Value::from(operator),
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        let effect = str_of(t, "effect");
        if t.get("tolerationSeconds").is_some_and(|s| !s.is_null()) && effect != "NoExecute" {
            errs.push(FieldError::invalid(
                format!("{p}.effect"),
                &Value::from(effect),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        match operator {
            "" | "Equal" => {
                let value = str_of(t, "value");
                for msg in label_value(value) {
                    errs.push(FieldError::invalid(
                        format!("{p}.operator"),
                        &Value::from(value),
                        &msg,
                    ));
                }
            }
            "Exists" => {
                if !str_of(t, "value").is_empty() {
                    errs.push(FieldError::invalid(
                        format!("{p}.operator"),
                        &t["value"],
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("{p}.operator"),
                &Value::from(other),
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
        {
            errs.push(FieldError::not_supported(
                format!("{p}.effect"),
                &Value::from(effect),
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ));
        }
    }
}

/// Validates volumes and returns their names (for volume mounts to refer to).
fn validate_volumes(volumes: &[Value], path: &str, errs: &mut Vec<FieldError>) -> HashSet<String> {
    let mut names = HashSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = str_of(v, "name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else {
            for msg in dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{p}.name"),
                    &Value::from(name),
                    &msg,
                ));
            }
            if !names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(
                    format!("{p}.name"),
                    &Value::from(name),
                ));
            }
        }
        let sources: Vec<&str> = VOLUME_SOURCES
            .iter()
            .copied()
            .filter(|s| v.get(*s).is_some_and(|x| !x.is_null()))
            .collect();
        match sources.as_slice() {
            [] => errs.push(FieldError::required(
                p.clone(),
                "must specify a volume type",
            )),
            [_, rest @ ..] => {
                for extra in rest {
                    errs.push(FieldError::forbidden(
                        format!("{p}.{extra}"),
                        "may not specify more than 1 volume type",
                    ));
                }
            }
        }
        let required = [
            ("configMap", "name"),
            ("secret", "secretName"),
            ("persistentVolumeClaim", "claimName"),
            ("hostPath", "path"),
        ];
        for (source, key) in required {
            if let Some(s) = v.get(source).filter(|s| s.is_object())
                && str_of(s, key).is_empty()
            {
                errs.push(FieldError::required(format!("{p}.{source}.{key}"), ""));
            }
        }
    }
    names
}

fn validate_containers(
    containers: &[Value],
    path: &str,
    volumes: &HashSet<String>,
    names: &mut HashSet<String>,
    init: bool,
    errs: &mut Vec<FieldError>,
) {
    for (i, c) in containers.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = str_of(c, "name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else {
            for msg in dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{p}.name"),
                    &Value::from(name),
                    &msg,
                ));
            }
            // Names are unique across init and regular containers together.
            if !names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(
                    format!("{p}.name"),
                    &Value::from(name),
                ));
            }
        }
        let image = str_of(c, "image");
        if image.is_empty() {
            errs.push(FieldError::required(format!("{p}.image"), ""));
        } else if image.trim() != image {
            errs.push(FieldError::invalid(
                format!("{p}.image"),
                &Value::from(image),
                "must not have leading or trailing whitespace",
            ));
        }
        if init {
            match c.get("restartPolicy").and_then(Value::as_str) {
                None | Some("Always") => {}
                Some(other) => errs.push(FieldError::not_supported(
                    format!("{p}.restartPolicy"),
                    &Value::from(other),
                    &["Always"],
                )),
            }
        } else if c.get("restartPolicy").is_some_and(|v| !v.is_null()) {
            errs.push(FieldError::forbidden(
                format!("{p}.restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
        validate_container_ports(arr(c, "ports"), &format!("{p}.ports"), errs);
        validate_env(arr(c, "env"), &format!("{p}.env"), errs);
        validate_volume_mounts(
            arr(c, "volumeMounts"),
            &format!("{p}.volumeMounts"),
            volumes,
            errs,
        );
        validate_resources(get(c, "resources"), &format!("{p}.resources"), errs);
        match c.get("imagePullPolicy").and_then(Value::as_str) {
            None | Some("Always" | "IfNotPresent" | "Never") => {}
            Some(other) => errs.push(FieldError::not_supported(
                format!("{p}.imagePullPolicy"),
                &Value::from(other),
                &["Always", "IfNotPresent", "Never"],
            )),
        }
        match c.get("terminationMessagePolicy").and_then(Value::as_str) {
            None | Some("File" | "FallbackToLogsOnError") => {}
            Some(other) => errs.push(FieldError::not_supported(
                format!("{p}.terminationMessagePolicy"),
                &Value::from(other),
                &["File", "FallbackToLogsOnError"],
            )),
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if let Some(pr) = c.get(probe).filter(|v| v.is_object()) {
                validate_probe(pr, &format!("{p}.{probe}"), errs);
            }
        }
    }
}

fn validate_probe(probe: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let handlers = ["exec", "httpGet", "tcpSocket", "grpc"];
    let set: Vec<&str> = handlers
        .iter()
        .copied()
        .filter(|h| probe.get(*h).is_some_and(|v| !v.is_null()))
        .collect();
    match set.as_slice() {
        [] => errs.push(FieldError::required(path, "must specify a handler type")),
        [_, rest @ ..] => {
            for extra in rest {
                errs.push(FieldError::forbidden(
                    format!("{path}.{extra}"),
                    "may not specify more than 1 handler type",
                ));
            }
        }
    }
    for key in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        nonnegative(probe, key, path, errs);
    }
}

fn validate_container_ports(ports: &[Value], path: &str, errs: &mut Vec<FieldError>) {
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = str_of(port, "name");
        if !name.is_empty() {
            for msg in port_name(name) {
                errs.push(FieldError::invalid(
                    format!("{p}.name"),
                    &Value::from(name),
                    &msg,
                ));
            }
            if !names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(
                    format!("{p}.name"),
                    &Value::from(name),
                ));
            }
        }
        match int_of(port, "containerPort") {
            None | Some(0) => errs.push(FieldError::required(format!("{p}.containerPort"), "")),
            Some(n) => {
                for msg in port_num(n) {
                    errs.push(FieldError::invalid(
                        format!("{p}.containerPort"),
                        &Value::from(n),
                        &msg,
                    ));
                }
            }
        }
        if let Some(n) = int_of(port, "hostPort").filter(|n| *n != 0) {
            for msg in port_num(n) {
                errs.push(FieldError::invalid(
                    format!("{p}.hostPort"),
                    &Value::from(n),
                    &msg,
                ));
            }
        }
        validate_protocol(port, &p, errs);
    }
}

fn validate_protocol(port: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match port.get("protocol").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required(format!("{path}.protocol"), "")),
        Some("TCP" | "UDP" | "SCTP") => {}
        Some(other) => errs.push(FieldError::not_supported(
            format!("{path}.protocol"),
            &Value::from(other),
            &["SCTP", "TCP", "UDP"],
        )),
    }
}

fn validate_env(env: &[Value], path: &str, errs: &mut Vec<FieldError>) {
    for (i, e) in env.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = str_of(e, "name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else if !name
            .bytes()
            .all(|c| (b' '..=b'~').contains(&c) && c != b'=')
        {
            // The relaxed rule (on by default since 1.32): printable ASCII except '='.
            errs.push(FieldError::invalid(
                format!("{p}.name"),
                &Value::from(name),
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
        if let Some(from) = e.get("valueFrom").filter(|v| v.is_object()) {
            if !str_of(e, "value").is_empty() {
                errs.push(FieldError::invalid(
                    format!("{p}.valueFrom"),
                    &Value::from(""),
                    "may not be specified when `value` is not empty",
                ));
            }
            let sources = [
                "fieldRef",
                "resourceFieldRef",
                "configMapKeyRef",
                "secretKeyRef",
            ];
            let n = sources
                .iter()
                .filter(|s| from.get(**s).is_some_and(|v| !v.is_null()))
                .count();
            if n == 0 {
                errs.push(FieldError::invalid(
                    format!("{p}.valueFrom"),
                    &Value::from(""),
                    "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
                ));
            } else if n > 1 {
                errs.push(FieldError::invalid(
                    format!("{p}.valueFrom"),
                    &Value::from(""),
                    "may not have more than one field specified at a time",
                ));
            }
        }
    }
}

fn validate_volume_mounts(
    mounts: &[Value],
    path: &str,
    volumes: &HashSet<String>,
    errs: &mut Vec<FieldError>,
) {
    let mut mount_points = HashSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = str_of(m, "name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        }
        if !volumes.contains(name) {
            errs.push(not_found(format!("{p}.name"), name));
        }
        let mount_path = str_of(m, "mountPath");
        if mount_path.is_empty() {
            errs.push(FieldError::required(format!("{p}.mountPath"), ""));
        } else if !mount_points.insert(mount_path.to_string()) {
            errs.push(FieldError::invalid(
                format!("{p}.mountPath"),
                &Value::from(mount_path),
                "must be unique",
            ));
        }
        let sub_path = str_of(m, "subPath");
        if !sub_path.is_empty() {
            if sub_path.starts_with('/') {
                errs.push(FieldError::invalid(
                    format!("{p}.subPath"),
                    &Value::from(sub_path),
                    "must be a relative path",
                ));
            }
            if sub_path.split('/').any(|s| s == "..") {
                errs.push(FieldError::invalid(
                    format!("{p}.subPath"),
                    &Value::from(sub_path),
                    "must not contain '..'",
                ));
            }
        }
    }
}

/// Resource names a container may request without a domain prefix.
fn is_standard_container_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
}

/// Native resources (no domain, or a `kubernetes.io/` one) other than huge pages may have
/// requests below limits; extended resources and huge pages must request what they limit.
fn overcommit_allowed(name: &str) -> bool {
    let native = !name.contains('/') || name.contains("kubernetes.io/");
    native && !name.starts_with("hugepages-")
}

fn validate_resources(res: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let mut limits: Vec<(&str, Quantity)> = Vec::new();
    for (section, is_limits) in [("limits", true), ("requests", false)] {
        let sp = format!("{path}.{section}");
        for (name, q) in obj(res, section).into_iter().flatten() {
            let fp = format!("{sp}[{name}]");
            if !name.contains('/') {
                if !is_standard_container_resource(name) {
                    errs.push(FieldError::invalid(
                        fp.clone(),
                        &Value::from(name.as_str()),
                        "must be a standard resource for containers",
                    ));
                }
            } else {
                for msg in qualified_name(name) {
                    errs.push(FieldError::invalid(
                        fp.clone(),
                        &Value::from(name.as_str()),
                        &msg,
                    ));
                }
            }
            let q = match quantity_of(q) {
                Ok(q) => q,
                Err(msg) => {
                    // Upstream rejects this while decoding; report it against the field.
                    errs.push(FieldError::invalid(fp, q, &msg));
                    continue;
                }
            };
            if q.nanos < 0 {
                errs.push(FieldError::invalid(
                    fp.clone(),
                    &Value::from(q.canonical()),
                    IS_NEGATIVE,
                ));
            }
            // Extended resources are counted in whole units.
            let integer_only = !overcommit_allowed(name) && !name.starts_with("hugepages-");
            if integer_only && q.nanos % 1_000_000_000 != 0 {
                errs.push(FieldError::invalid(
                    fp.clone(),
                    &Value::from(q.canonical()),
                    "must be an integer",
                ));
            }
            if is_limits {
                limits.push((name.as_str(), q));
            } else if let Some((_, limit)) = limits.iter().find(|(n, _)| *n == name.as_str()) {
                if q != *limit && !overcommit_allowed(name) {
                    errs.push(FieldError::invalid(
                        sp.clone(),
                        &Value::from(q.canonical()),
                        &format!("must be equal to {name} limit of {}", limit.canonical()),
                    ));
                } else if q > *limit {
                    errs.push(FieldError::invalid(
                        sp.clone(),
                        &Value::from(q.canonical()),
                        &format!(
                            "must be less than or equal to {name} limit of {}",
                            limit.canonical()
                        ),
                    ));
                }
            } else if !overcommit_allowed(name) {
                errs.push(FieldError::required(
                    format!("{path}.limits"),
                    "Limit must be set for non overcommitable resources",
                ));
            }
        }
    }
}

/// Validates a pod template's metadata (labels, annotations) and spec.
fn validate_pod_template(template: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let meta = get(template, "metadata");
    validate_labels(
        obj(meta, "labels"),
        &format!("{path}.metadata.labels"),
        errs,
    );
    validate_annotations(
        obj(meta, "annotations"),
        &format!("{path}.metadata.annotations"),
        errs,
    );
    validate_pod_spec(get(template, "spec"), &format!("{path}.spec"), errs);
}

// ---------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------

/// Validates a Service, and on update that its cluster IP did not change.
pub fn service(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = get(new, "spec");
    let svc_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let cluster_ip = str_of(spec, "clusterIP");
    let headless = cluster_ip == "None";
    let ports = arr(spec, "ports");
    if !matches!(
        svc_type,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        errs.push(FieldError::not_supported(
            "spec.type",
            &Value::from(svc_type),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    if svc_type == "ExternalName" {
        let external = str_of(spec, "externalName");
        if external.is_empty() {
            errs.push(FieldError::required("spec.externalName", ""));
        } else {
            // A trailing dot (a fully qualified name) is allowed.
            for msg in dns1123_subdomain(external.strip_suffix('.').unwrap_or(external)) {
                errs.push(FieldError::invalid(
                    "spec.externalName",
                    &Value::from(external),
                    &msg,
                ));
            }
        }
    }
    if ports.is_empty() && !headless && svc_type != "ExternalName" {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        let name = str_of(port, "name");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else if !name.is_empty() {
            for msg in dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{p}.name"),
                    &Value::from(name),
                    &msg,
                ));
            }
            if !names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(
                    format!("{p}.name"),
                    &Value::from(name),
                ));
            }
        }
        let number = int_of(port, "port").unwrap_or(0);
        for msg in port_num(number) {
            errs.push(FieldError::invalid(
                format!("{p}.port"),
                &Value::from(number),
                &msg,
            ));
        }
        validate_protocol(port, &p, &mut errs);
        match port.get("targetPort") {
            Some(Value::String(s)) => {
                for msg in port_name(s) {
                    errs.push(FieldError::invalid(
                        format!("{p}.targetPort"),
                        &Value::from(s.as_str()),
                        &msg,
                    ));
                }
            }
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(0);
                for msg in port_num(n) {
                    errs.push(FieldError::invalid(
                        format!("{p}.targetPort"),
                        &Value::from(n),
                        &msg,
                    ));
                }
            }
            _ => {}
        }
        if let Some(node_port) = int_of(port, "nodePort").filter(|n| *n != 0) {
            if svc_type == "ClusterIP" {
                errs.push(FieldError::forbidden(
                    format!("{p}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
            for msg in port_num(node_port) {
                errs.push(FieldError::invalid(
                    format!("{p}.nodePort"),
                    &Value::from(node_port),
                    &msg,
                ));
            }
        }
    }
    match spec.get("sessionAffinity").and_then(Value::as_str) {
        None | Some("None" | "ClientIP") => {}
        Some(other) => errs.push(FieldError::not_supported(
            "spec.sessionAffinity",
            &Value::from(other),
            &["ClientIP", "None"],
        )),
    }
    if !cluster_ip.is_empty() && !headless && cluster_ip.parse::<std::net::IpAddr>().is_err() {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            &Value::from(cluster_ip),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    if headless && matches!(svc_type, "NodePort" | "LoadBalancer") {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            &Value::from("None"),
            &format!("may not be set to 'None' for {svc_type} services"),
        ));
    }
    if let Some(policy) = spec
        .get("externalTrafficPolicy")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    {
        let external_ips = !arr(spec, "externalIPs").is_empty();
        if svc_type == "ClusterIP" && !external_ips || svc_type == "ExternalName" {
            errs.push(FieldError::invalid(
                "spec.externalTrafficPolicy",
                &Value::from(policy),
                "may only be set for externally-accessible services",
            ));
        } else if !matches!(policy, "Cluster" | "Local") {
            errs.push(FieldError::not_supported(
                "spec.externalTrafficPolicy",
                &Value::from(policy),
                &["Cluster", "Local"],
            ));
        }
    }
    if let Some(old) = old {
        let old_spec = get(old, "spec");
        let old_type = old_spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP");
        let old_ip = str_of(old_spec, "clusterIP");
        // Switching to or from ExternalName releases or allocates the IP, so it may change
        // then; an empty new IP is filled from the old object by the registry.
        if old_type != "ExternalName"
            && svc_type != "ExternalName"
            && !old_ip.is_empty()
            && !cluster_ip.is_empty()
            && old_ip != cluster_ip
        {
            let ips: Vec<String> = match spec.get("clusterIPs").and_then(Value::as_array) {
                Some(list) => list
                    .iter()
                    .map(|v| format!("{:?}", v.as_str().unwrap_or("")))
                    .collect(),
                None => vec![format!("{cluster_ip:?}")],
            };
            errs.push(invalid_shown(
                "spec.clusterIPs[0]",
                &format!("[]string{{{}}}", ips.join(", ")),
                "may not change once set",
            ));
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------
// ConfigMaps and Secrets
// ---------------------------------------------------------------------------------------

fn validate_data_keys(m: Option<&Map<String, Value>>, path: &str, errs: &mut Vec<FieldError>) {
    for key in m.into_iter().flat_map(|m| m.keys()) {
        for msg in config_map_key(key) {
            errs.push(FieldError::invalid(
                format!("{path}[{key}]"),
                &Value::from(key.as_str()),
                &msg,
            ));
        }
    }
}

fn decoded_len(v: &Value) -> usize {
    use base64::Engine;
    let s = v.as_str().unwrap_or("");
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(|b| b.len())
        .unwrap_or(s.len())
}

/// Upstream's rule for objects marked `immutable: true`: neither the flag nor the data may
/// change afterwards.
fn validate_immutable_data(new: &Value, old: &Value, keys: &[&str], errs: &mut Vec<FieldError>) {
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    if new.get("immutable").and_then(Value::as_bool) != Some(true) {
        errs.push(FieldError::forbidden(
            "immutable",
            "field is immutable when `immutable` is set",
        ));
    }
    for key in keys {
        let empty = Value::Object(Map::new());
        let norm = |v: &Value| {
            if v.is_null() {
                empty.clone()
            } else {
                v.clone()
            }
        };
        if norm(get(new, key)) != norm(get(old, key)) {
            errs.push(FieldError::forbidden(
                *key,
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

/// Validates a ConfigMap: keys, total size, and immutability.
pub fn configmap(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let data = obj(new, "data");
    let binary = obj(new, "binaryData");
    validate_data_keys(data, "data", &mut errs);
    validate_data_keys(binary, "binaryData", &mut errs);
    let mut total = 0;
    for (k, v) in data.into_iter().flatten() {
        if binary.is_some_and(|b| b.contains_key(k)) {
            errs.push(FieldError::invalid(
                format!("data[{k}]"),
                &Value::from(k.as_str()),
                "duplicate of key present in binaryData",
            ));
        }
        total += v.as_str().map_or(0, str::len);
    }
    for (k, v) in binary.into_iter().flatten() {
        if data.is_some_and(|d| d.contains_key(k)) {
            errs.push(FieldError::invalid(
                format!("binaryData[{k}]"),
                &Value::from(k.as_str()),
                "duplicate of key present in data",
            ));
        }
        total += decoded_len(v);
    }
    if total > MAX_SECRET_SIZE {
        // Upstream reports the size against the whole object, with an empty path.
        errs.push(too_long("", MAX_SECRET_SIZE));
    }
    if let Some(old) = old {
        validate_immutable_data(new, old, &["data", "binaryData"], &mut errs);
    }
    errs
}

/// Validates a Secret: keys, size, the per-type required keys, and on update its type and
/// immutability.
pub fn secret(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let data = obj(new, "data");
    validate_data_keys(data, "data", &mut errs);
    let total: usize = data
        .into_iter()
        .flatten()
        .map(|(_, v)| decoded_len(v))
        .sum();
    if total > MAX_SECRET_SIZE {
        errs.push(too_long("data", MAX_SECRET_SIZE));
    }
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    let secret_type = str_of(new, "type");
    match secret_type {
        "kubernetes.io/service-account-token" => {
            let annotation =
                get(get(new, "metadata"), "annotations").get("kubernetes.io/service-account.name");
            if annotation.and_then(Value::as_str).unwrap_or("").is_empty() {
                errs.push(FieldError::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        "kubernetes.io/dockercfg" if !has(".dockercfg") => {
            errs.push(FieldError::required("data[.dockercfg]", ""));
        }
        "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
            errs.push(FieldError::required("data[.dockerconfigjson]", ""));
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            errs.push(FieldError::required("data[username]", ""));
            errs.push(FieldError::required("data[password]", ""));
        }
        "kubernetes.io/ssh-auth" => {
            let key = data
                .and_then(|d| d.get("ssh-privatekey"))
                .and_then(Value::as_str);
            if key.unwrap_or("").is_empty() {
                errs.push(FieldError::required("data[ssh-privatekey]", ""));
            }
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !has(key) {
                    errs.push(FieldError::required(format!("data[{key}]"), ""));
                }
            }
        }
        _ => {}
    }
    if let Some(old) = old {
        let old_type = str_of(old, "type");
        if old_type != secret_type {
            errs.push(FieldError::invalid(
                "type",
                &Value::from(secret_type),
                IS_IMMUTABLE,
            ));
        }
        validate_immutable_data(new, old, &["data"], &mut errs);
    }
    errs
}

// ---------------------------------------------------------------------------------------
// PersistentVolumeClaims
// ---------------------------------------------------------------------------------------

/// Validates a PersistentVolumeClaim's access modes and storage request; after creation only
/// the storage request and the volume attributes class may change.
pub fn persistentvolumeclaim(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_pvc_spec(get(new, "spec"), "spec", &mut errs);
    if let Some(old) = old {
        let strip = |spec: &Value| {
            let mut s = spec.clone();
            if let Some(m) = s.as_object_mut() {
                m.remove("volumeAttributesClassName");
                if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
                    r.remove("requests");
                }
                // Binding fills the volume name in; the user may not change it afterwards.
                if str_of(spec, "volumeName").is_empty() {
                    m.remove("volumeName");
                }
            }
            s
        };
        let (n, o) = (strip(get(new, "spec")), strip(get(old, "spec")));
        if n != o
            && !(str_of(get(old, "spec"), "volumeName").is_empty()
                && without(&n, "volumeName") == without(&o, "volumeName"))
        {
            errs.push(FieldError::forbidden(
                "spec",
                &format!(
                    "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims\n{}",
                    spec_diff(&o, &n)
                ),
            ));
        }
    }
    errs
}

fn without(v: &Value, key: &str) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove(key);
    }
    v
}

fn validate_pvc_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let modes = arr(spec, "accessModes");
    if modes.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.accessModes"),
            "at least 1 access mode is required",
        ));
    }
    for mode in modes {
        let m = mode.as_str().unwrap_or("");
        if !matches!(
            m,
            "ReadWriteOnce" | "ReadOnlyMany" | "ReadWriteMany" | "ReadWriteOncePod"
        ) {
            errs.push(FieldError::not_supported(
                format!("{path}.accessModes"),
                mode,
                &[
                    "ReadOnlyMany",
                    "ReadWriteMany",
                    "ReadWriteOnce",
                    "ReadWriteOncePod",
                ],
            ));
        }
    }
    if modes.iter().any(|m| m == "ReadWriteOncePod") && modes.len() > 1 {
        errs.push(FieldError::forbidden(
            format!("{path}.accessModes"),
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
    let storage_path = format!("{path}.resources[storage]");
    match get(get(spec, "resources"), "requests").get("storage") {
        None => errs.push(FieldError::required(storage_path, "")),
        Some(q) => match quantity_of(q) {
            Err(msg) => errs.push(FieldError::invalid(storage_path, q, &msg)),
            Ok(q) if q.nanos <= 0 => errs.push(FieldError::invalid(
                storage_path,
                &Value::from(q.canonical()),
                "must be greater than zero",
            )),
            Ok(_) => {}
        },
    }
    match spec.get("volumeMode").and_then(Value::as_str) {
        None | Some("Filesystem" | "Block") => {}
        Some(other) => errs.push(FieldError::not_supported(
            format!("{path}.volumeMode"),
            &Value::from(other),
            &["Block", "Filesystem"],
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Workloads (apps/v1)
// ---------------------------------------------------------------------------------------

/// What differs between the workload kinds' common spec checks.
struct WorkloadRules {
    /// The word upstream uses in "empty selector is invalid for …".
    empty_selector_kind: &'static str,
    /// The kind named in "activeDeadlineSeconds in … is not Supported".
    deadline_kind: &'static str,
}

fn validate_selector_and_template(spec: &Value, rules: &WorkloadRules, errs: &mut Vec<FieldError>) {
    let template = get(spec, "template");
    match spec.get("selector").filter(|s| s.is_object()) {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            validate_label_selector(sel, "spec.selector", errs);
            let n =
                obj(sel, "matchLabels").map_or(0, Map::len) + arr(sel, "matchExpressions").len();
            if n == 0 {
                errs.push(invalid_shown(
                    "spec.selector",
                    &go_label_selector(sel),
                    &format!(
                        "empty selector is invalid for {}",
                        rules.empty_selector_kind
                    ),
                ));
            } else {
                let labels = obj(get(template, "metadata"), "labels");
                if selector_matches(sel, labels) == Some(false) {
                    errs.push(invalid_shown(
                        "spec.template.metadata.labels",
                        &go_string_map(labels),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
    }
    if template.is_null() {
        errs.push(FieldError::required("spec.template", ""));
        return;
    }
    validate_pod_template(template, "spec.template", errs);
    let pod_spec = get(template, "spec");
    let policy = str_of(pod_spec, "restartPolicy");
    if policy != "Always" && !policy.is_empty() {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            &Value::from(policy),
            &["Always"],
        ));
    }
    if pod_spec
        .get("activeDeadlineSeconds")
        .is_some_and(|v| !v.is_null())
    {
        errs.push(FieldError::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            &format!(
                "activeDeadlineSeconds in {} is not Supported",
                rules.deadline_kind
            ),
        ));
    }
}

fn validate_selector_immutable(new: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    if let Some(old) = old {
        let (n, o) = (
            get(get(new, "spec"), "selector"),
            get(get(old, "spec"), "selector"),
        );
        if n != o {
            errs.push(invalid_shown(
                "spec.selector",
                &go_label_selector(n),
                IS_IMMUTABLE,
            ));
        }
    }
}

/// Validates an int-or-percent field (`maxSurge`, `maxUnavailable`).
fn validate_int_or_percent(v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match v {
        Value::String(s) => {
            let digits = s.strip_suffix('%').unwrap_or("");
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    &regex_error(PERCENT_ERR, PERCENT_FMT, &["1%", "93%"]),
                ));
            } else if digits.parse::<u64>().is_ok_and(|p| p > 100)
                && path.ends_with("maxUnavailable")
            {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    "must not be greater than 100%",
                ));
            }
        }
        Value::Number(n) if n.as_i64().is_some_and(|n| n < 0) => {
            errs.push(FieldError::invalid(path, v, IS_NEGATIVE))
        }
        _ => {}
    }
}

/// The numeric value of an int-or-percent for the "both zero" check.
fn int_or_percent_is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.strip_suffix('%').and_then(|d| d.parse::<u64>().ok()) == Some(0),
        Value::Number(n) => n.as_i64() == Some(0),
        _ => true,
    }
}

fn validate_rolling_update(ru: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let max_unavailable = get(ru, "maxUnavailable");
    let max_surge = get(ru, "maxSurge");
    validate_int_or_percent(max_unavailable, &format!("{path}.maxUnavailable"), errs);
    validate_int_or_percent(max_surge, &format!("{path}.maxSurge"), errs);
    if int_or_percent_is_zero(max_unavailable) && int_or_percent_is_zero(max_surge) {
        errs.push(invalid_shown(
            format!("{path}.maxUnavailable"),
            &go_int_or_string(max_unavailable),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

/// Validates a Deployment; its selector may not change after creation.
pub fn deployment(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = get(new, "spec");
    nonnegative(spec, "replicas", "spec", &mut errs);
    validate_selector_and_template(
        spec,
        &WorkloadRules {
            empty_selector_kind: "deployment",
            deadline_kind: "Deployment",
        },
        &mut errs,
    );
    let strategy = get(spec, "strategy");
    match str_of(strategy, "type") {
        "Recreate" => {
            if strategy.get("rollingUpdate").is_some_and(|v| !v.is_null()) {
                errs.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => match strategy.get("rollingUpdate").filter(|v| v.is_object()) {
            None => errs.push(FieldError::required(
                "spec.strategy.rollingUpdate",
                "this should be defaulted and never be nil",
            )),
            Some(ru) => validate_rolling_update(ru, "spec.strategy.rollingUpdate", &mut errs),
        },
        other => errs.push(FieldError::not_supported(
            "spec.strategy",
            &Value::from(other),
            &["Recreate", "RollingUpdate"],
        )),
    }
    for key in [
        "minReadySeconds",
        "revisionHistoryLimit",
        "progressDeadlineSeconds",
    ] {
        nonnegative(spec, key, "spec", &mut errs);
    }
    if let Some(deadline) = int_of(spec, "progressDeadlineSeconds")
        && deadline <= int_of(spec, "minReadySeconds").unwrap_or(0)
    {
        errs.push(FieldError::invalid(
            "spec.progressDeadlineSeconds",
            &Value::from(deadline),
            "must be greater than minReadySeconds",
        ));
    }
    validate_selector_immutable(new, old, &mut errs);
    errs
}

/// Validates a ReplicaSet; its selector may not change after creation.
pub fn replicaset(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = get(new, "spec");
    nonnegative(spec, "replicas", "spec", &mut errs);
    nonnegative(spec, "minReadySeconds", "spec", &mut errs);
    // Upstream's ReplicaSet message says "deployment" too.
    validate_selector_and_template(
        spec,
        &WorkloadRules {
            empty_selector_kind: "deployment",
            deadline_kind: "ReplicaSet",
        },
        &mut errs,
    );
    validate_selector_immutable(new, old, &mut errs);
    errs
}

/// Validates a DaemonSet; its selector may not change after creation.
pub fn daemonset(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = get(new, "spec");
    validate_selector_and_template(
        spec,
        &WorkloadRules {
            empty_selector_kind: "daemonset",
            deadline_kind: "DaemonSet",
        },
        &mut errs,
    );
    nonnegative(spec, "minReadySeconds", "spec", &mut errs);
    nonnegative(spec, "revisionHistoryLimit", "spec", &mut errs);
    let strategy = get(spec, "updateStrategy");
    match str_of(strategy, "type") {
        "OnDelete" => {}
        "RollingUpdate" => match strategy.get("rollingUpdate").filter(|v| v.is_object()) {
            None => errs.push(FieldError::required(
                "spec.updateStrategy.rollingUpdate",
                "",
            )),
            Some(ru) => validate_rolling_update(ru, "spec.updateStrategy.rollingUpdate", &mut errs),
        },
        other => errs.push(FieldError::not_supported(
            "spec.updateStrategy",
            &Value::from(other),
            &["RollingUpdate", "OnDelete"],
        )),
    }
    validate_selector_immutable(new, old, &mut errs);
    errs
}

/// Validates a StatefulSet; after creation only replicas, ordinals, template, update
/// strategy, PVC retention policy and minReadySeconds may change.
pub fn statefulset(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = get(new, "spec");
    nonnegative(spec, "replicas", "spec", &mut errs);
    nonnegative(spec, "minReadySeconds", "spec", &mut errs);
    validate_selector_and_template(
        spec,
        &WorkloadRules {
            empty_selector_kind: "statefulset",
            deadline_kind: "StatefulSet",
        },
        &mut errs,
    );
    match str_of(spec, "podManagementPolicy") {
        "" => errs.push(FieldError::required("spec.podManagementPolicy", "")),
        "OrderedReady" | "Parallel" => {}
        other => errs.push(FieldError::invalid(
            "spec.podManagementPolicy",
            &Value::from(other),
            "must be 'OrderedReady' or 'Parallel'",
        )),
    }
    let strategy = get(spec, "updateStrategy");
    match str_of(strategy, "type") {
        "" => errs.push(FieldError::required("spec.updateStrategy", "")),
        "OnDelete" => {
            if strategy.get("rollingUpdate").is_some_and(|v| !v.is_null()) {
                errs.push(invalid_shown(
                    "spec.updateStrategy.rollingUpdate",
                    &get(strategy, "rollingUpdate").to_string(),
                    "only allowed for updateStrategy 'RollingUpdate'",
                ));
            }
        }
        "RollingUpdate" => nonnegative(
            get(strategy, "rollingUpdate"),
            "partition",
            "spec.updateStrategy.rollingUpdate",
            &mut errs,
        ),
        other => errs.push(invalid_shown(
            "spec.updateStrategy",
            &format!("apps.StatefulSetUpdateStrategy{{Type:{other:?}}}"),
            "must be 'RollingUpdate' or 'OnDelete'",
        )),
    }
    for (i, claim) in arr(spec, "volumeClaimTemplates").iter().enumerate() {
        let name = str_of(get(claim, "metadata"), "name");
        let p = format!("spec.volumeClaimTemplates[{i}]");
        for msg in dns1123_subdomain(name) {
            errs.push(FieldError::invalid(
                format!("{p}.metadata.name"),
                &Value::from(name),
                &msg,
            ));
        }
        validate_pvc_spec(get(claim, "spec"), &format!("{p}.spec"), &mut errs);
    }
    if let Some(old) = old {
        let mutable = [
            "replicas",
            "ordinals",
            "template",
            "updateStrategy",
            "persistentVolumeClaimRetentionPolicy",
            "minReadySeconds",
        ];
        let strip = |s: &Value| {
            let mut s = s.clone();
            if let Some(m) = s.as_object_mut() {
                for k in mutable {
                    m.remove(k);
                }
            }
            s
        };
        if strip(spec) != strip(get(old, "spec")) {
            errs.push(FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------
// Jobs and CronJobs (batch/v1)
// ---------------------------------------------------------------------------------------

/// The checks a Job spec and a CronJob's job template share (upstream's `validateJobSpec`).
fn validate_job_spec_common(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for key in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        nonnegative(spec, key, path, errs);
    }
    if let Some(mode) = spec.get("completionMode").and_then(Value::as_str) {
        match mode {
            "NonIndexed" => {}
            "Indexed" => {
                if spec.get("completions").is_none_or(Value::is_null) {
                    errs.push(FieldError::required(
                        format!("{path}.completions"),
                        "when completion mode is Indexed",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("{path}.completionMode"),
                &Value::from(other),
                &["NonIndexed", "Indexed"],
            )),
        }
    }
    if let Some(policy) = spec.get("podReplacementPolicy").and_then(Value::as_str)
        && !matches!(policy, "TerminatingOrFailed" | "Failed")
    {
        errs.push(FieldError::not_supported(
            format!("{path}.podReplacementPolicy"),
            &Value::from(policy),
            &["Failed", "TerminatingOrFailed"],
        ));
    }
    let template = get(spec, "template");
    validate_pod_template(template, &format!("{path}.template"), errs);
    let restart_path = format!("{path}.template.spec.restartPolicy");
    match str_of(get(template, "spec"), "restartPolicy") {
        // Defaulting turns an unset policy into Always, so both get the same message.
        "" | "Always" => errs.push(FieldError::required(
            restart_path,
            "valid values: \"OnFailure\", \"Never\"",
        )),
        "OnFailure" | "Never" => {}
        other => errs.push(FieldError::not_supported(
            restart_path,
            &Value::from(other),
            &["OnFailure", "Never"],
        )),
    }
}

/// Validates a Job; after creation its selector, completions, completion mode and (unless
/// suspended) template may not change.
pub fn job(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = get(new, "spec");
    match spec.get("selector").filter(|s| s.is_object()) {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            validate_label_selector(sel, "spec.selector", &mut errs);
            let labels = obj(get(get(spec, "template"), "metadata"), "labels");
            if selector_matches(sel, labels) == Some(false) {
                errs.push(invalid_shown(
                    "spec.template.metadata.labels",
                    &go_string_map(labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    validate_job_spec_common(spec, "spec", &mut errs);
    if let Some(old) = old {
        let old_spec = get(old, "spec");
        validate_selector_immutable(new, Some(old), &mut errs);
        for key in [
            "completions",
            "completionMode",
            "podFailurePolicy",
            "backoffLimitPerIndex",
            "managedBy",
        ] {
            let n = get(spec, key);
            if n != get(old_spec, key) {
                errs.push(FieldError::invalid(format!("spec.{key}"), n, IS_IMMUTABLE));
            }
        }
        // A suspended job that never started may have its template changed.
        let suspended = old_spec.get("suspend").and_then(Value::as_bool) == Some(true)
            && get(get(old, "status"), "startTime").is_null();
        if !suspended && get(spec, "template") != get(old_spec, "template") {
            errs.push(invalid_shown(
                "spec.template",
                "core.PodTemplateSpec{...}",
                IS_IMMUTABLE,
            ));
        }
    }
    errs
}

/// Validates a CronJob: its schedule, time zone, policy, history limits and job template.
pub fn cronjob(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = str_of(get(new, "metadata"), "name");
    // The controller appends an 11-character suffix to make job names, which are limited
    // to 63 characters.
    if old.is_none() && name.len() > 52 {
        errs.push(FieldError::invalid(
            "metadata.name",
            &Value::from(name),
            "must be no more than 52 characters",
        ));
    }
    let spec = get(new, "spec");
    let schedule = str_of(spec, "schedule");
    let time_zone = spec.get("timeZone").and_then(Value::as_str);
    if schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule", ""));
    } else {
        if let Err(msg) = parse_cron_schedule(schedule) {
            errs.push(FieldError::invalid(
                "spec.schedule",
                &Value::from(schedule),
                &msg,
            ));
        }
        // Updates keep tolerating what older objects may already hold.
        let old_schedule = old.map(|o| str_of(get(o, "spec"), "schedule"));
        if schedule.contains("TZ") && old_schedule != Some(schedule) {
            let msg = if time_zone.is_some() {
                "cannot use both timeZone field and TZ or CRON_TZ in schedule"
            } else {
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
            };
            errs.push(FieldError::invalid(
                "spec.schedule",
                &Value::from(schedule),
                msg,
            ));
        }
    }
    if let Some(tz) = time_zone {
        validate_time_zone(tz, &mut errs);
    }
    nonnegative(spec, "startingDeadlineSeconds", "spec", &mut errs);
    match spec
        .get("concurrencyPolicy")
        .and_then(Value::as_str)
        .unwrap_or("")
    {
        "Allow" | "Forbid" | "Replace" => {}
        "" => errs.push(FieldError::required("spec.concurrencyPolicy", "")),
        other => errs.push(FieldError::not_supported(
            "spec.concurrencyPolicy",
            &Value::from(other),
            &["Allow", "Forbid", "Replace"],
        )),
    }
    for key in ["successfulJobsHistoryLimit", "failedJobsHistoryLimit"] {
        nonnegative(spec, key, "spec", &mut errs);
    }
    let job_template = get(spec, "jobTemplate");
    let meta = get(job_template, "metadata");
    validate_labels(
        obj(meta, "labels"),
        "spec.jobTemplate.metadata.labels",
        &mut errs,
    );
    validate_annotations(
        obj(meta, "annotations"),
        "spec.jobTemplate.metadata.annotations",
        &mut errs,
    );
    let job_spec = get(job_template, "spec");
    validate_job_spec_common(job_spec, "spec.jobTemplate.spec", &mut errs);
    if let Some(sel) = job_spec.get("selector").filter(|s| !s.is_null()) {
        errs.push(invalid_shown(
            "spec.jobTemplate.spec.selector",
            &go_label_selector(sel),
            "`selector` will be auto-generated",
        ));
    }
    if job_spec.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        errs.push(FieldError::not_supported(
            "spec.jobTemplate.spec.manualSelector",
            &Value::Bool(true),
            &["nil", "false"],
        ));
    }
    errs
}

fn validate_time_zone(tz: &str, errs: &mut Vec<FieldError>) {
    let shown = Value::from(tz);
    if tz.is_empty() {
        errs.push(FieldError::invalid(
            "spec.timeZone",
            &shown,
            "timeZone must be nil or non-empty string",
        ));
        return;
    }
    let part_ok = |p: &str| {
        p != "."
            && p != ".."
            && !p.starts_with('-')
            && (1..=14).contains(&p.len())
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'+'))
    };
    if !tz.split('/').all(part_ok) {
        errs.push(FieldError::invalid(
            "spec.timeZone",
            &shown,
            &format!("unknown time zone {tz}"),
        ));
        return;
    }
    if tz.eq_ignore_ascii_case("Local") {
        errs.push(FieldError::invalid(
            "spec.timeZone",
            &shown,
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        ));
        return;
    }
    // Without a time zone database on this host every name would fail; only judge names
    // when there is one to judge them against.
    let db = jiff::tz::db();
    if tz != "UTC" && !db.is_definitively_empty() && db.get(tz).is_err() {
        errs.push(FieldError::invalid(
            "spec.timeZone",
            &shown,
            &format!("unknown time zone {tz}"),
        ));
    }
}

/// One cron field's allowed range and names.
struct CronBounds {
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MONTH_NAMES: &[(&str, u32)] = &[
    ("jan", 1),
    ("feb", 2),
    ("mar", 3),
    ("apr", 4),
    ("may", 5),
    ("jun", 6),
    ("jul", 7),
    ("aug", 8),
    ("sep", 9),
    ("oct", 10),
    ("nov", 11),
    ("dec", 12),
];
const DOW_NAMES: &[(&str, u32)] = &[
    ("sun", 0),
    ("mon", 1),
    ("tue", 2),
    ("wed", 3),
    ("thu", 4),
    ("fri", 5),
    ("sat", 6),
];

/// Parses a standard five-field cron schedule or a descriptor (`@hourly`, `@every 5m`), with
/// the error messages of the cron library upstream uses (robfig/cron v3).
pub fn parse_cron_schedule(spec: &str) -> Result<(), String> {
    if spec.is_empty() {
        return Err("empty spec string".to_string());
    }
    let mut spec = spec;
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let Some(space) = spec.find(' ') else {
            return Err(format!(
                "provided bad location {}: unknown time zone",
                &spec[spec.find('=').unwrap_or(0) + 1..]
            ));
        };
        spec = spec[space..].trim();
    }
    if let Some(descriptor) = spec.strip_prefix('@') {
        return match descriptor {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            d if d.starts_with("every ") => {
                let dur = &d["every ".len()..];
                if go_duration_ok(dur) {
                    Ok(())
                } else {
                    Err(format!(
                        "failed to parse duration {spec}: time: invalid duration {dur:?}"
                    ))
                }
            }
            _ => Err(format!("unrecognized descriptor: {spec}")),
        };
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    let bounds = [
        CronBounds {
            min: 0,
            max: 59,
            names: &[],
        },
        CronBounds {
            min: 0,
            max: 23,
            names: &[],
        },
        CronBounds {
            min: 1,
            max: 31,
            names: &[],
        },
        CronBounds {
            min: 1,
            max: 12,
            names: MONTH_NAMES,
        },
        CronBounds {
            min: 0,
            max: 6,
            names: DOW_NAMES,
        },
    ];
    for (field, b) in fields.iter().zip(&bounds) {
        for expr in field.split(',').filter(|e| !e.is_empty()) {
            cron_range(expr, b)?;
        }
    }
    Ok(())
}

fn cron_range(expr: &str, b: &CronBounds) -> Result<(), String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_high: Vec<&str> = range_and_step[0].split('-').collect();
    let (start, mut end) = if low_high[0] == "*" || low_high[0] == "?" {
        (b.min, b.max)
    } else {
        let start = cron_int_or_name(low_high[0], b.names)?;
        let end = match low_high.len() {
            1 => start,
            2 => cron_int_or_name(low_high[1], b.names)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
        (start, end)
    };
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = cron_int(range_and_step[1])?;
            // "N/step" means "N-max/step".
            if low_high.len() == 1 && low_high[0] != "*" && low_high[0] != "?" {
                end = b.max;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok(())
}

fn cron_int_or_name(expr: &str, names: &[(&str, u32)]) -> Result<u32, String> {
    let lower = expr.to_ascii_lowercase();
    match names.iter().find(|(n, _)| *n == lower) {
        Some((_, v)) => Ok(*v),
        None => cron_int(expr),
    }
}

fn cron_int(expr: &str) -> Result<u32, String> {
    let digits = expr.strip_prefix(['+', '-']).unwrap_or(expr);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing {expr:?}: invalid syntax"
        ));
    }
    let n: i64 = expr.parse().map_err(|_| {
        format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing {expr:?}: value out of range"
        )
    })?;
    if n < 0 {
        return Err(format!("negative number ({n}) not allowed: {expr}"));
    }
    u32::try_from(n).map_err(|_| format!("end of range ({n}) above maximum: {expr}"))
}

/// Whether `s` is a Go `time.ParseDuration` string (`1h30m`, `90s`, `1.5h`).
fn go_duration_ok(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|c| c.is_ascii_digit() || *c == b'.')
            .count();
        if num_len == 0 || rest[..num_len] == *"." {
            return false;
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .bytes()
            .take_while(|c| !c.is_ascii_digit() && *c != b'.')
            .count();
        if !matches!(
            &rest[..unit_len],
            "ns" | "us" | "µs" | "μs" | "ms" | "s" | "m" | "h"
        ) {
            return false;
        }
        rest = &rest[unit_len..];
    }
    true
}

/// PodDisruptionBudget (policy/v1): at most one of `minAvailable` and `maxUnavailable`, each
/// a non-negative integer or a percentage (at most 100% for `maxUnavailable`).
pub fn poddisruptionbudget(new: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = get(new, "spec");
    let min = get(spec, "minAvailable");
    let max = get(spec, "maxUnavailable");
    if !min.is_null() && !max.is_null() {
        errs.push(FieldError::invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    validate_int_or_percent(min, "spec.minAvailable", &mut errs);
    validate_int_or_percent(max, "spec.maxUnavailable", &mut errs);
    let policy = get(spec, "unhealthyPodEvictionPolicy");
    if let Some(p) = policy.as_str()
        && !matches!(p, "IfHealthyBudget" | "AlwaysAllow")
    {
        errs.push(FieldError::not_supported(
            "spec.unhealthyPodEvictionPolicy",
            policy,
            &["AlwaysAllow", "IfHealthyBudget"],
        ));
    }
    errs
}

/// The highest priority a PriorityClass not named `system-…` may have.
const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

/// PriorityClass (scheduling.k8s.io/v1): a value within the user range (unless a system
/// class), unchanged by updates; a known preemption policy.
pub fn priorityclass(new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match int_of(new, "value") {
        None => errs.push(FieldError::required("value", "")),
        Some(v) if v > HIGHEST_USER_PRIORITY && !name.starts_with("system-") => {
            errs.push(FieldError::forbidden(
                "value",
                "maximum allowed value of a user defined priority is 1000000000",
            ))
        }
        Some(_) => {}
    }
    if let Some(old) = old
        && int_of(old, "value") != int_of(new, "value")
    {
        errs.push(FieldError::forbidden(
            "value",
            "may not be changed in an update.",
        ));
    }
    let policy = get(new, "preemptionPolicy");
    if let Some(p) = policy.as_str()
        && !matches!(p, "PreemptLowerPriority" | "Never")
    {
        errs.push(FieldError::not_supported(
            "preemptionPolicy",
            policy,
            &["Never", "PreemptLowerPriority"],
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rendered(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(FieldError::render).collect()
    }

    #[test]
    fn dns_label_messages_match_upstream() {
        assert!(dns1123_label("my-name").is_empty());
        assert_eq!(
            dns1123_label("My_Name"),
            vec![
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            ]
        );
        assert_eq!(dns1123_label("a.b"), vec!["must not contain dots"]);
        assert_eq!(
            dns1123_label(&"a".repeat(64)),
            vec!["must be no more than 63 characters"]
        );
    }

    #[test]
    fn dns_subdomain_messages_match_upstream() {
        assert!(dns1123_subdomain("example.com").is_empty());
        assert_eq!(
            dns1123_subdomain("Bad"),
            vec![
                r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ]
        );
        assert_eq!(
            dns1123_subdomain(&"a".repeat(254)),
            vec!["must be no more than 253 characters"]
        );
    }

    #[test]
    fn qualified_names_and_label_values() {
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert_eq!(qualified_name("/x"), vec!["prefix part must be non-empty"]);
        assert_eq!(
            qualified_name("a/b/c")[0],
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        );
        assert!(label_value("").is_empty());
        assert_eq!(
            label_value("-bad"),
            vec![
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
            ]
        );
        assert_eq!(path_segment_name("a/b", false), vec!["may not contain '/'"]);
        assert_eq!(path_segment_name("..", false), vec!["may not be '..'"]);
    }

    #[test]
    fn object_meta_requires_a_name() {
        let errs = validate_object_meta(&json!({"namespace": "default"}), true, false);
        assert_eq!(
            rendered(&errs),
            vec!["metadata.name: Required value: name or generateName is required"]
        );
        let errs =
            validate_object_meta(&json!({"name": "Foo", "labels": {"a": "-x"}}), false, true);
        let r = rendered(&errs);
        assert!(
            r[0].starts_with("metadata.name: Invalid value: \"Foo\": a lowercase RFC 1123 label"),
            "{r:?}"
        );
        assert!(
            r[1].starts_with("metadata.labels: Invalid value: \"-x\": a valid label"),
            "{r:?}"
        );
        // A generateName prefix may end in a dash.
        assert!(
            validate_object_meta(
                &json!({"generateName": "web-", "name": "web-x1"}),
                false,
                false
            )
            .is_empty()
        );
    }

    #[test]
    fn object_meta_annotations_and_owners() {
        let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT + 1);
        let errs = validate_object_meta(
            &json!({"name": "a", "annotations": {"k": big}}),
            false,
            false,
        );
        assert_eq!(
            rendered(&errs),
            vec!["metadata.annotations: Too long: may not be more than 262144 bytes"]
        );
        let errs = validate_object_meta(
            &json!({"name": "a", "ownerReferences": [{"apiVersion": "v1"}]}),
            false,
            false,
        );
        assert_eq!(
            rendered(&errs),
            vec![
                "metadata.ownerReferences.kind: Invalid value: \"\": must not be empty",
                "metadata.ownerReferences.name: Invalid value: \"\": must not be empty",
                "metadata.ownerReferences.uid: Invalid value: \"\": must not be empty",
            ]
        );
    }

    #[test]
    fn quantities_parse_exactly() {
        let q = |s: &str| parse_quantity(s).unwrap();
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("0.1").milli_value(), 100);
        assert_eq!(q("1").nanos, q("1000m").nanos);
        assert_eq!(q("1Ki").value(), 1024);
        assert_eq!(q("1.5Gi").value(), 1_610_612_736);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1E").value(), 1_000_000_000_000_000_000);
        assert_eq!(q("1n").nanos, 1);
        assert_eq!(q("-2k").value(), -2000);
        assert!(q("500m") < q("1"));
        assert_eq!(parse_quantity("abc"), Err(QUANTITY_FORMAT_ERR.to_string()));
        assert_eq!(
            parse_quantity("1K"),
            Err("unable to parse quantity's suffix".to_string())
        );
        assert_eq!(parse_quantity(""), Err(QUANTITY_FORMAT_ERR.to_string()));
    }

    #[test]
    fn quantities_print_canonically() {
        let c = |s: &str| canonical_quantity(s).unwrap();
        assert_eq!(c("2000m"), "2");
        assert_eq!(c("1500m"), "1500m");
        assert_eq!(c("0.5"), "500m");
        assert_eq!(c("1000"), "1k");
        assert_eq!(c("1024Mi"), "1Gi");
        assert_eq!(c("1536Mi"), "1536Mi");
        assert_eq!(c("512"), "512");
        assert_eq!(c("1e3"), "1e3");
        assert_eq!(c("0"), "0");
        assert_eq!(c("0.5Ki"), "512");
    }

    fn pod_with(container: Value) -> Value {
        json!({"spec": {"restartPolicy": "Always", "containers": [container]}})
    }

    #[test]
    fn pod_spec_errors() {
        let errs = pod(
            &json!({"spec": {"restartPolicy": "Sometimes", "containers": []}}),
            None,
        );
        assert_eq!(
            rendered(&errs),
            vec![
                "spec.containers: Required value",
                "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            ]
        );
        let errs = pod(
            &pod_with(
                json!({"name": "web", "ports": [{"containerPort": 70000, "protocol": "TCP"}]}),
            ),
            None,
        );
        assert_eq!(
            rendered(&errs),
            vec![
                "spec.containers[0].image: Required value",
                "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ]
        );
    }

    #[test]
    fn pod_container_names_are_unique_across_init_containers() {
        let spec = json!({"spec": {"restartPolicy": "Always",
            "initContainers": [{"name": "a", "image": "x"}],
            "containers": [{"name": "a", "image": "x"}]}});
        assert_eq!(
            rendered(&pod(&spec, None)),
            vec!["spec.containers[0].name: Duplicate value: \"a\""]
        );
    }

    #[test]
    fn pod_requests_may_not_exceed_limits() {
        let c = json!({"name": "a", "image": "x", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1500m"}}});
        assert_eq!(
            rendered(&pod(&pod_with(c), None)),
            vec![
                "spec.containers[0].resources.requests: Invalid value: \"1500m\": must be less than or equal to cpu limit of 1"
            ]
        );
        let ok = json!({"name": "a", "image": "x", "resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "1024Mi"}}});
        assert!(pod(&pod_with(ok), None).is_empty());
    }

    #[test]
    fn pod_volumes_and_mounts() {
        let spec = json!({"spec": {"restartPolicy": "Always",
            "volumes": [{"name": "data", "emptyDir": {}, "hostPath": {"path": "/x"}}, {"name": "data", "emptyDir": {}}],
            "containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "cache", "mountPath": "/c"}]}]}});
        assert_eq!(
            rendered(&pod(&spec, None)),
            vec![
                "spec.volumes[0].emptyDir: Forbidden: may not specify more than 1 volume type",
                "spec.volumes[1].name: Duplicate value: \"data\"",
                "spec.containers[0].volumeMounts[0].name: Not found: \"cache\"",
            ]
        );
    }

    #[test]
    fn pod_update_may_change_only_images() {
        let old = pod_with(json!({"name": "a", "image": "nginx:1"}));
        let new = pod_with(json!({"name": "a", "image": "nginx:2"}));
        assert!(pod(&new, Some(&old)).is_empty());
        let mut changed = pod_with(json!({"name": "a", "image": "nginx:2"}));
        changed["spec"]["nodeName"] = json!("n1");
        let errs = pod(&changed, Some(&old));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].render().starts_with(
            "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)\n"
        ));
    }

    #[test]
    fn service_rules() {
        let errs = service(&json!({"spec": {"type": "Foo", "ports": []}}), None);
        assert_eq!(
            rendered(&errs),
            vec![
                "spec.type: Unsupported value: \"Foo\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
                "spec.ports: Required value",
            ]
        );
        let two = json!({"spec": {"ports": [
            {"port": 80, "protocol": "TCP", "targetPort": 80},
            {"name": "b", "port": 0, "protocol": "TCP", "targetPort": 8080}]}});
        assert_eq!(
            rendered(&service(&two, None)),
            vec![
                "spec.ports[0].name: Required value",
                "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            ]
        );
        assert!(service(&json!({"spec": {"clusterIP": "None"}}), None).is_empty());
        let old = json!({"spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": [{"port": 80, "protocol": "TCP"}]}});
        let new = json!({"spec": {"clusterIP": "10.0.0.2", "clusterIPs": ["10.0.0.2"], "ports": [{"port": 80, "protocol": "TCP"}]}});
        assert_eq!(
            rendered(&service(&new, Some(&old))),
            vec![
                "spec.clusterIPs[0]: Invalid value: []string{\"10.0.0.2\"}: may not change once set"
            ]
        );
    }

    #[test]
    fn configmap_and_secret_rules() {
        let errs = configmap(&json!({"data": {"bad key": "v"}}), None);
        assert_eq!(
            rendered(&errs),
            vec![
                "data[bad key]: Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
            ]
        );
        let old = json!({"immutable": true, "data": {"a": "1"}});
        let new = json!({"immutable": true, "data": {"a": "2"}});
        assert_eq!(
            rendered(&configmap(&new, Some(&old))),
            vec!["data: Forbidden: field is immutable when `immutable` is set"]
        );
        let tls = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": ""}});
        assert_eq!(
            rendered(&secret(&tls, None)),
            vec!["data[tls.key]: Required value"]
        );
        let old = json!({"type": "Opaque"});
        assert_eq!(
            rendered(&secret(
                &json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}),
                Some(&old)
            )),
            vec!["type: Invalid value: \"kubernetes.io/tls\": field is immutable"]
        );
    }

    #[test]
    fn pvc_rules() {
        let errs = persistentvolumeclaim(
            &json!({"spec": {"accessModes": ["ReadWriteSometimes"]}}),
            None,
        );
        assert_eq!(
            rendered(&errs),
            vec![
                "spec.accessModes: Unsupported value: \"ReadWriteSometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
                "spec.resources[storage]: Required value",
            ]
        );
        let errs = persistentvolumeclaim(
            &json!({"spec": {"resources": {"requests": {"storage": "1Gi"}}}}),
            None,
        );
        assert_eq!(
            rendered(&errs),
            vec!["spec.accessModes: Required value: at least 1 access mode is required"]
        );
    }

    fn deployment_obj(selector: Value, labels: Value) -> Value {
        json!({"spec": {"replicas": 1, "selector": selector,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {"metadata": {"labels": labels},
                "spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}]}}}})
    }

    #[test]
    fn deployment_selector_must_match() {
        let d = deployment_obj(json!({"matchLabels": {"app": "a"}}), json!({"app": "b"}));
        assert_eq!(
            rendered(&deployment(&d, None)),
            vec![
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"b\"}: `selector` does not match template `labels`"
            ]
        );
        let ok = deployment_obj(json!({"matchLabels": {"app": "a"}}), json!({"app": "a"}));
        assert!(deployment(&ok, None).is_empty());
        let moved = deployment_obj(json!({"matchLabels": {"app": "b"}}), json!({"app": "b"}));
        assert_eq!(
            rendered(&deployment(&moved, Some(&ok))),
            vec![
                "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"b\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
            ]
        );
        let mut neg = ok.clone();
        neg["spec"]["replicas"] = json!(-1);
        assert_eq!(
            rendered(&deployment(&neg, None)),
            vec!["spec.replicas: Invalid value: -1: must be greater than or equal to 0"]
        );
    }

    #[test]
    fn job_restart_policy() {
        let j = json!({"spec": {"selector": {"matchLabels": {"x": "1"}},
            "template": {"metadata": {"labels": {"x": "1"}},
                "spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}]}}}});
        assert_eq!(
            rendered(&job(&j, None)),
            vec![
                "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""
            ]
        );
    }

    #[test]
    fn cron_schedules() {
        for ok in [
            "*/5 * * * *",
            "0 0 * * MON-FRI",
            "@hourly",
            "@every 1h30m",
            "0 9 1 jan,jul *",
            "5/15 * * * *",
        ] {
            assert_eq!(parse_cron_schedule(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            parse_cron_schedule("bad"),
            Err("expected exactly 5 fields, found 1: [bad]".to_string())
        );
        assert_eq!(
            parse_cron_schedule("0 70 * * *"),
            Err("end of range (70) above maximum (23): 70".to_string())
        );
        assert_eq!(
            parse_cron_schedule("@sometimes"),
            Err("unrecognized descriptor: @sometimes".to_string())
        );
        assert_eq!(
            parse_cron_schedule("x * * * *"),
            Err(
                "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
                    .to_string()
            )
        );
        let cj = json!({"metadata": {"name": "c"}, "spec": {"schedule": "61 * * * *", "concurrencyPolicy": "Allow",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "x"}]}}}}}});
        assert_eq!(
            rendered(&cronjob(&cj, None)),
            vec![
                "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
            ]
        );
    }
}
