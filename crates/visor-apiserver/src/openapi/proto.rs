//! The OpenAPI v2 document in gnostic's protobuf form (`openapi.v2.Document`), which is what
//! kubectl asks `/openapi/v2` for: client-go only decodes that form, and when a server
//! answers 406 it retries another protobuf-only endpoint rather than accepting JSON.
//!
//! The encoder walks the JSON document and writes only the messages and fields the
//! documents here use; field numbers follow gnostic's `OpenAPIv2.proto`. Vendor extensions
//! are carried as `Any.yaml` text, which is how gnostic stores them (JSON is valid YAML).

use serde_json::{Map, Value};

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn tag(&mut self, field: u32, wire: u32) {
        self.varint(u64::from((field << 3) | wire));
    }

    fn bytes(&mut self, field: u32, data: &[u8]) {
        self.tag(field, LEN);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
    }

    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn opt_string(&mut self, field: u32, v: Option<&Value>) {
        if let Some(s) = v.and_then(Value::as_str) {
            self.string(field, s);
        }
    }

    fn strings(&mut self, field: u32, v: Option<&Value>) {
        for s in v.and_then(Value::as_array).into_iter().flatten() {
            if let Some(s) = s.as_str() {
                // Repeated strings keep empty entries, unlike singular ones.
                self.bytes(field, s.as_bytes());
            }
        }
    }

    fn boolean(&mut self, field: u32, v: Option<&Value>) {
        if v.and_then(Value::as_bool) == Some(true) {
            self.tag(field, VARINT);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u32, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_i64).filter(|n| *n != 0) {
            self.tag(field, VARINT);
            self.varint(n as u64);
        }
    }

    fn double(&mut self, field: u32, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_f64).filter(|n| *n != 0.0) {
            self.tag(field, FIXED64);
            self.0.extend_from_slice(&n.to_le_bytes());
        }
    }

    fn message(&mut self, field: u32, inner: Writer) {
        self.bytes(field, &inner.0);
    }

    /// `Any { yaml = 2 }` holding a JSON value.
    fn any(&mut self, field: u32, value: &Value) {
        let mut any = Writer::default();
        any.string(2, &value.to_string());
        self.message(field, any);
    }

    /// `repeated NamedAny vendor_extension`: every `x-` key of an object.
    fn extensions(&mut self, field: u32, obj: &Map<String, Value>) {
        for (name, value) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut named = Writer::default();
            named.string(1, name);
            named.any(2, value);
            self.message(field, named);
        }
    }
}

/// Encodes a v2 document (as built by this module) as `openapi.v2.Document`.
pub fn document(doc: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    let Some(doc) = doc.as_object() else {
        return w.0;
    };
    w.opt_string(1, doc.get("swagger"));
    if let Some(info) = doc.get("info").and_then(Value::as_object) {
        let mut i = Writer::default();
        i.opt_string(1, info.get("title"));
        i.opt_string(2, info.get("version"));
        i.opt_string(3, info.get("description"));
        w.message(2, i);
    }
    w.strings(6, doc.get("consumes"));
    w.strings(7, doc.get("produces"));
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        let mut p = Writer::default();
        for (name, item) in paths {
            let mut named = Writer::default();
            named.string(1, name);
            named.message(2, path_item(item));
            p.message(2, named);
        }
        w.message(8, p);
    }
    if let Some(definitions) = doc.get("definitions").and_then(Value::as_object) {
        let mut d = Writer::default();
        for (name, schema_value) in definitions {
            let mut named = Writer::default();
            named.string(1, name);
            named.message(2, schema(schema_value));
            d.message(1, named);
        }
        w.message(9, d);
    }
    w.extensions(16, doc);
    w.0
}

fn path_item(item: &Value) -> Writer {
    let mut w = Writer::default();
    let Some(item) = item.as_object() else {
        return w;
    };
    for (method, field) in [
        ("get", 2),
        ("put", 3),
        ("post", 4),
        ("delete", 5),
        ("options", 6),
        ("head", 7),
        ("patch", 8),
    ] {
        if let Some(op) = item.get(method) {
            w.message(field, operation(op));
        }
    }
    for p in item
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.message(9, parameter(p));
    }
    w.extensions(10, item);
    w
}

fn operation(op: &Value) -> Writer {
    let mut w = Writer::default();
    let Some(op) = op.as_object() else {
        return w;
    };
    w.strings(1, op.get("tags"));
    w.opt_string(3, op.get("description"));
    w.opt_string(5, op.get("operationId"));
    w.strings(6, op.get("produces"));
    w.strings(7, op.get("consumes"));
    for p in op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.message(8, parameter(p));
    }
    if let Some(responses) = op.get("responses").and_then(Value::as_object) {
        let mut r = Writer::default();
        for (code, response) in responses {
            let mut resp = Writer::default();
            resp.opt_string(1, response.get("description"));
            if let Some(s) = response.get("schema") {
                let mut item = Writer::default();
                item.message(1, schema(s));
                resp.message(2, item);
            }
            let mut value = Writer::default();
            value.message(1, resp);
            let mut named = Writer::default();
            named.string(1, code);
            named.message(2, value);
            r.message(1, named);
        }
        w.message(9, r);
    }
    w.strings(10, op.get("schemes"));
    w.extensions(13, op);
    w
}

/// `ParametersItem { Parameter parameter = 1 }` for a body, query or path parameter.
fn parameter(p: &Value) -> Writer {
    let mut param = Writer::default();
    if let Some(obj) = p.as_object() {
        match obj.get("in").and_then(Value::as_str) {
            Some("body") => {
                let mut body = Writer::default();
                body.opt_string(1, obj.get("description"));
                body.opt_string(2, obj.get("name"));
                body.string(3, "body");
                body.boolean(4, obj.get("required"));
                if let Some(s) = obj.get("schema") {
                    body.message(5, schema(s));
                }
                body.extensions(6, obj);
                param.message(1, body);
            }
            Some(location @ ("query" | "path")) => {
                // Query and path sub-schemas share their first fields; from `type` on, the
                // query form has `allow_empty_value` (5) first and is shifted by one.
                let shift = u32::from(location == "query");
                let mut sub = Writer::default();
                sub.boolean(1, obj.get("required"));
                sub.string(2, location);
                sub.opt_string(3, obj.get("description"));
                sub.opt_string(4, obj.get("name"));
                sub.opt_string(5 + shift, obj.get("type"));
                sub.opt_string(6 + shift, obj.get("format"));
                sub.boolean(19 + shift, obj.get("uniqueItems"));
                sub.extensions(22 + shift, obj);
                let mut non_body = Writer::default();
                non_body.message(if location == "query" { 3 } else { 4 }, sub);
                param.message(2, non_body);
            }
            _ => {}
        }
    }
    let mut item = Writer::default();
    item.message(1, param);
    item
}

fn schema(value: &Value) -> Writer {
    let mut w = Writer::default();
    let Some(s) = value.as_object() else {
        return w;
    };
    w.opt_string(1, s.get("$ref"));
    w.opt_string(2, s.get("format"));
    w.opt_string(3, s.get("title"));
    w.opt_string(4, s.get("description"));
    if let Some(default) = s.get("default") {
        w.any(5, default);
    }
    w.double(6, s.get("multipleOf"));
    w.double(7, s.get("maximum"));
    w.boolean(8, s.get("exclusiveMaximum"));
    w.double(9, s.get("minimum"));
    w.boolean(10, s.get("exclusiveMinimum"));
    w.int64(11, s.get("maxLength"));
    w.int64(12, s.get("minLength"));
    w.opt_string(13, s.get("pattern"));
    w.int64(14, s.get("maxItems"));
    w.int64(15, s.get("minItems"));
    w.boolean(16, s.get("uniqueItems"));
    w.int64(17, s.get("maxProperties"));
    w.int64(18, s.get("minProperties"));
    w.strings(19, s.get("required"));
    for e in s
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.any(20, e);
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Writer::default();
            a.tag(2, VARINT);
            a.varint(u64::from(*b));
            w.message(21, a);
        }
        Some(ap @ Value::Object(_)) => {
            let mut a = Writer::default();
            a.message(1, schema(ap));
            w.message(21, a);
        }
        _ => {}
    }
    match s.get("type") {
        Some(Value::String(t)) => {
            let mut t_item = Writer::default();
            t_item.string(1, t);
            w.message(22, t_item);
        }
        Some(types @ Value::Array(_)) => {
            let mut t_item = Writer::default();
            t_item.strings(1, Some(types));
            w.message(22, t_item);
        }
        _ => {}
    }
    match s.get("items") {
        Some(Value::Array(items)) => {
            let mut i = Writer::default();
            for item in items {
                i.message(1, schema(item));
            }
            w.message(23, i);
        }
        Some(item @ Value::Object(_)) => {
            let mut i = Writer::default();
            i.message(1, schema(item));
            w.message(23, i);
        }
        _ => {}
    }
    for sub in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.message(24, schema(sub));
    }
    if let Some(properties) = s.get("properties").and_then(Value::as_object) {
        let mut p = Writer::default();
        for (name, sub) in properties {
            let mut named = Writer::default();
            named.string(1, name);
            named.message(2, schema(sub));
            p.message(1, named);
        }
        w.message(25, p);
    }
    w.opt_string(26, s.get("discriminator"));
    w.boolean(27, s.get("readOnly"));
    if let Some(example) = s.get("example") {
        w.any(30, example);
    }
    w.extensions(31, s);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_fields_with_gnostic_numbers() {
        let bytes = document(&json!({"swagger": "2.0"}));
        assert_eq!(bytes, [0x0a, 3, b'2', b'.', b'0']);
        let s = schema(&json!({"type": "string", "x-a": true})).0;
        // type (22, length-delimited) → TypeItem { value = 1 }
        assert_eq!(&s[..6], &[0xb2, 0x01, 8, 0x0a, 6, b's']);
        // vendor extension (31) → NamedAny { name = "x-a", value = Any { yaml = "true" } }
        let ext = &s[s.len() - 16..];
        assert_eq!(&ext[..3], &[0xfa, 0x01, 13]);
        assert!(ext.ends_with(b"true"));
    }
}
