//! Decoding of Kubernetes protobuf request bodies into the JSON form of the API.
//!
//! kubectl's typed commands (`create configmap`, `create token`, `drain`, `auth can-i`, ...)
//! send `application/vnd.kubernetes.protobuf` bodies. The server works in JSON, so a body is
//! turned into exactly the JSON object the same request would have carried as JSON.
//!
//! A body is the 4-byte magic `k8s\0` followed by a `runtime.Unknown` message: field 1 the
//! type meta (apiVersion 1, kind 2), field 2 the object's own message, 3 its content encoding
//! and 4 its content type. The object's message layout comes from the generated [`schema`]
//! table (see `scripts/gen-protobuf-schema.py`), which also gives every field's JSON name.
//!
//! The messages are proto2: a scalar that is present is emitted even when it holds its zero
//! value (`replicas: 0`), an absent one is omitted. A few apimachinery types marshal to JSON by
//! hand in Go (times, durations, quantities, int-or-string, raw JSON); [`Special`] names them.

pub(crate) mod schema;

use base64::Engine;
use serde_json::{Map, Number, Value};

/// Prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";
/// Deepest message nesting accepted. Real objects nest a few dozen levels at most (CRD schemas
/// are the deepest); the bound keeps hostile input from exhausting the stack.
const MAX_DEPTH: usize = 100;

/// The wire kind of a field's value (a map's value kind for maps).
///
/// No built-in message uses `uint32`, `uint64` or `float` today; they stay so that a table
/// regenerated from newer protos that do still compiles and decodes.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)]
pub(crate) enum Kind {
    String,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Bool,
    Double,
    Float,
    Bytes,
    /// An index into [`schema::MESSAGES`].
    Message(usize),
}

/// How a field appears in its message.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    /// A proto2 optional field: present or absent.
    Single,
    Repeated,
    /// A map with this key kind; the field's kind is the value kind.
    Map(Kind),
    /// An embedded Go struct whose JSON fields sit in the outer object (Volume's VolumeSource).
    Inline,
}

/// Messages whose JSON form is not an object of their fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Special {
    None,
    /// meta/v1 Time {1: seconds, 2: nanos}: RFC 3339 to the second, UTC.
    Time,
    /// meta/v1 MicroTime: RFC 3339 with microseconds.
    MicroTime,
    /// meta/v1 Duration {1: nanoseconds}: Go's duration string.
    Duration,
    /// resource.Quantity {1: string}: the string.
    Quantity,
    /// intstr.IntOrString {1: type, 2: intVal, 3: strVal}: a number or a string.
    IntOrString,
    /// A message whose field 1 holds JSON text (RawExtension, FieldsV1, apiextensions JSON).
    RawJson,
    /// A Go named string slice {1: repeated items}: an array (Verbs, ExtraValue).
    StringList,
    /// apiextensions JSONSchemaPropsOrArray {1: schema, 2: schemas}.
    SchemaOrArray,
    /// apiextensions JSONSchemaPropsOrBool {1: allows, 2: schema}.
    SchemaOrBool,
    /// apiextensions JSONSchemaPropsOrStringArray {1: schema, 2: property}.
    SchemaOrStringArray,
}

/// One field of a message.
#[derive(Debug)]
pub(crate) struct Field {
    pub(crate) tag: u32,
    /// The JSON name; empty for [`Shape::Inline`].
    pub(crate) json: &'static str,
    pub(crate) kind: Kind,
    pub(crate) shape: Shape,
}

/// One message: its fields sorted by tag.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) name: &'static str,
    pub(crate) special: Special,
    pub(crate) fields: &'static [Field],
}

/// Decodes a `application/vnd.kubernetes.protobuf` body into the object's JSON form, with
/// `apiVersion` and `kind` taken from the envelope.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    decode_envelope(body, 0)
}

fn decode_envelope(body: &[u8], depth: usize) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("not a Kubernetes protobuf body: missing the k8s\\0 prefix")?;
    let envelope = Envelope::parse(rest)?;
    if !envelope.content_encoding.is_empty() {
        return Err(format!(
            "unsupported protobuf content encoding {:?}",
            envelope.content_encoding
        ));
    }
    let (api_version, kind) = (envelope.api_version, envelope.kind);
    if kind.is_empty() {
        return Err("protobuf body has no kind in its type meta".to_string());
    }
    let index = lookup(&api_version, &kind).ok_or_else(|| {
        format!("no protobuf schema for apiVersion {api_version:?}, kind {kind:?}")
    })?;
    let decoded = decode_message(index, envelope.raw, depth + 1)?;
    let Value::Object(fields) = decoded else {
        return Err(format!("{kind} does not decode to an object"));
    };
    let mut object = Map::new();
    object.insert("apiVersion".to_string(), Value::String(api_version));
    object.insert("kind".to_string(), Value::String(kind));
    for (key, value) in fields {
        if key != "apiVersion" && key != "kind" {
            object.insert(key, value);
        }
    }
    Ok(Value::Object(object))
}

/// Finds the message of a top-level object.
fn lookup(api_version: &str, kind: &str) -> Option<usize> {
    if let Ok(i) = schema::KINDS.binary_search_by(|(v, k, _)| (*v, *k).cmp(&(api_version, kind))) {
        return schema::KINDS.get(i).map(|(_, _, m)| *m);
    }
    // client-go encodes meta/v1 options under the group version of the request.
    let i = schema::ANY_VERSION_KINDS
        .binary_search_by(|(k, _)| (*k).cmp(kind))
        .ok()?;
    schema::ANY_VERSION_KINDS.get(i).map(|(_, m)| *m)
}

/// The fields of `runtime.Unknown` that matter here.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
}

impl<'a> Envelope<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let mut envelope = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
        };
        let mut reader = Reader::new(bytes);
        while !reader.done() {
            let (tag, value) = reader.field()?;
            match (tag, value) {
                (1, Raw::Len(type_meta)) => {
                    let mut inner = Reader::new(type_meta);
                    while !inner.done() {
                        match inner.field()? {
                            (1, Raw::Len(s)) => envelope.api_version = lossy(s),
                            (2, Raw::Len(s)) => envelope.kind = lossy(s),
                            (1 | 2, _) => return Err("malformed protobuf type meta".to_string()),
                            _ => {}
                        }
                    }
                }
                (2, Raw::Len(raw)) => envelope.raw = raw,
                (3, Raw::Len(s)) => envelope.content_encoding = lossy(s),
                // The content type names the raw bytes' format; only protobuf is ever sent.
                (4, Raw::Len(_)) => {}
                (1..=4, _) => return Err("malformed protobuf envelope".to_string()),
                _ => {}
            }
        }
        Ok(envelope)
    }
}

/// A field value as it sits on the wire.
#[derive(Clone, Copy, Debug)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

/// A reader of protobuf wire format over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or("truncated protobuf varint")?;
            self.pos += 1;
            // The tenth byte may only carry the top bit of a 64-bit value.
            if i == 9 && byte > 1 {
                return Err("protobuf varint overflows 64 bits".to_string());
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("protobuf varint overflows 64 bits".to_string())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or("truncated protobuf field")?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads one field: its number and value. Groups (wire types 3 and 4) are a proto2
    /// feature no Kubernetes message uses, so they are rejected rather than skipped.
    fn field(&mut self) -> Result<(u32, Raw<'a>), String> {
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3)
            .map_err(|_| "protobuf field number out of range".to_string())?;
        if tag == 0 {
            return Err("protobuf field number 0".to_string());
        }
        let value = match key & 7 {
            0 => Raw::Varint(self.varint()?),
            1 => Raw::Fixed64(u64::from_le_bytes(self.fixed::<8>()?)),
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| "protobuf length out of range".to_string())?;
                Raw::Len(self.take(len)?)
            }
            5 => Raw::Fixed32(u32::from_le_bytes(self.fixed::<4>()?)),
            other => return Err(format!("unsupported protobuf wire type {other}")),
        };
        Ok((tag, value))
    }
}

/// What a message's field collected while scanning the wire.
enum Slot<'a> {
    Empty,
    /// A singular scalar: proto keeps the last occurrence.
    Scalar(Raw<'a>),
    /// A singular message, possibly split over several occurrences, which proto merges.
    Chunks(Vec<&'a [u8]>),
    /// Repeated elements, or map entries, in wire order.
    Many(Vec<Raw<'a>>),
}

fn message_def(index: usize) -> Result<&'static Message, String> {
    schema::MESSAGES
        .get(index)
        .ok_or_else(|| format!("protobuf schema has no message {index}"))
}

/// Decodes the bytes of message `index` into its JSON form.
fn decode_message(index: usize, bytes: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("protobuf message nesting is too deep".to_string());
    }
    let message = message_def(index)?;
    let slots = scan(message, bytes)?;
    match message.special {
        Special::None => to_object(message, slots, depth).map(Value::Object),
        special => decode_special(message, special, bytes.is_empty(), &slots, depth),
    }
}

/// Sorts the wire fields of one message into its field slots, checking wire types.
fn scan<'a>(message: &Message, bytes: &'a [u8]) -> Result<Vec<Slot<'a>>, String> {
    let mut slots: Vec<Slot<'a>> = message.fields.iter().map(|_| Slot::Empty).collect();
    let mut reader = Reader::new(bytes);
    while !reader.done() {
        let (tag, raw) = reader.field()?;
        // Unknown fields come from newer servers' types; Go skips them too.
        let Ok(i) = message.fields.binary_search_by_key(&tag, |f| f.tag) else {
            continue;
        };
        let (Some(field), Some(slot)) = (message.fields.get(i), slots.get_mut(i)) else {
            continue;
        };
        let wrong = || {
            format!(
                "wrong wire type for field {} of {}",
                field.tag, message.name
            )
        };
        match field.shape {
            Shape::Single | Shape::Inline => {
                if !wire_matches(field.kind, &raw) {
                    return Err(wrong());
                }
                match (field.kind, raw) {
                    (Kind::Message(_), Raw::Len(chunk)) => match slot {
                        Slot::Chunks(chunks) => chunks.push(chunk),
                        _ => *slot = Slot::Chunks(vec![chunk]),
                    },
                    _ => *slot = Slot::Scalar(raw),
                }
            }
            Shape::Repeated => {
                if !matches!(slot, Slot::Many(_)) {
                    *slot = Slot::Many(Vec::new());
                }
                let Slot::Many(elements) = slot else {
                    return Err(wrong());
                };
                match raw {
                    // Packed numbers: proto2 writers may use either encoding.
                    Raw::Len(packed) if is_numeric(field.kind) => {
                        unpack(field.kind, packed, elements)?
                    }
                    _ if wire_matches(field.kind, &raw) => elements.push(raw),
                    _ => return Err(wrong()),
                }
            }
            Shape::Map(_) => {
                let Raw::Len(_) = raw else {
                    return Err(wrong());
                };
                match slot {
                    Slot::Many(entries) => entries.push(raw),
                    _ => *slot = Slot::Many(vec![raw]),
                }
            }
        }
    }
    Ok(slots)
}

fn is_numeric(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Bool
            | Kind::Double
            | Kind::Float
    )
}

fn wire_matches(kind: Kind, raw: &Raw) -> bool {
    match kind {
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Bool => {
            matches!(raw, Raw::Varint(_))
        }
        Kind::Double => matches!(raw, Raw::Fixed64(_)),
        Kind::Float => matches!(raw, Raw::Fixed32(_)),
        Kind::String | Kind::Bytes | Kind::Message(_) => matches!(raw, Raw::Len(_)),
    }
}

fn unpack<'a>(kind: Kind, packed: &'a [u8], out: &mut Vec<Raw<'a>>) -> Result<(), String> {
    let mut reader = Reader::new(packed);
    while !reader.done() {
        out.push(match kind {
            Kind::Double => Raw::Fixed64(u64::from_le_bytes(reader.fixed::<8>()?)),
            Kind::Float => Raw::Fixed32(u32::from_le_bytes(reader.fixed::<4>()?)),
            _ => Raw::Varint(reader.varint()?),
        });
    }
    Ok(())
}

/// Joins the occurrences of a singular message, as proto's merge semantics prescribe.
fn merged<'a>(chunks: &[&'a [u8]]) -> std::borrow::Cow<'a, [u8]> {
    match chunks {
        [one] => std::borrow::Cow::Borrowed(*one),
        many => std::borrow::Cow::Owned(many.concat()),
    }
}

/// Builds the JSON object of an ordinary message, fields in tag order.
fn to_object(
    message: &Message,
    slots: Vec<Slot>,
    depth: usize,
) -> Result<Map<String, Value>, String> {
    let mut object = Map::new();
    for (field, slot) in message.fields.iter().zip(slots) {
        match (field.shape, slot) {
            (_, Slot::Empty) => {}
            (Shape::Inline, Slot::Chunks(chunks)) => {
                let Kind::Message(index) = field.kind else {
                    continue;
                };
                match decode_message(index, &merged(&chunks), depth + 1)? {
                    Value::Object(inner) => object.extend(inner),
                    _ => {
                        return Err(format!(
                            "inline field {} of {} is not an object",
                            field.tag, message.name
                        ));
                    }
                }
            }
            (_, Slot::Chunks(chunks)) => {
                let Kind::Message(index) = field.kind else {
                    continue;
                };
                object.insert(
                    field.json.to_string(),
                    decode_message(index, &merged(&chunks), depth + 1)?,
                );
            }
            (_, Slot::Scalar(raw)) => {
                object.insert(field.json.to_string(), value_of(field.kind, raw, depth)?);
            }
            (Shape::Map(key_kind), Slot::Many(entries)) => {
                let mut map = Map::new();
                for entry in entries {
                    let Raw::Len(bytes) = entry else { continue };
                    let (key, value) = map_entry(key_kind, field.kind, bytes, depth)?;
                    map.insert(key, value);
                }
                object.insert(field.json.to_string(), Value::Object(map));
            }
            (_, Slot::Many(elements)) => {
                let values = elements
                    .into_iter()
                    .map(|raw| value_of(field.kind, raw, depth))
                    .collect::<Result<_, _>>()?;
                object.insert(field.json.to_string(), Value::Array(values));
            }
        }
    }
    Ok(object)
}

/// Decodes one map entry {1: key, 2: value}. A missing key or value is its zero value.
fn map_entry(
    key_kind: Kind,
    value_kind: Kind,
    bytes: &[u8],
    depth: usize,
) -> Result<(String, Value), String> {
    let mut key = None;
    let mut value = None;
    let mut reader = Reader::new(bytes);
    while !reader.done() {
        match reader.field()? {
            (1, raw) if wire_matches(key_kind, &raw) => key = Some(raw),
            (2, raw) if wire_matches(value_kind, &raw) => value = Some(raw),
            (1 | 2, _) => return Err("wrong wire type in a protobuf map entry".to_string()),
            _ => {}
        }
    }
    let key = match key.map(|raw| value_of(key_kind, raw, depth)).transpose()? {
        None => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    };
    let value = match value {
        Some(raw) => value_of(value_kind, raw, depth)?,
        None => zero_value(value_kind, depth)?,
    };
    Ok((key, value))
}

fn zero_value(kind: Kind, depth: usize) -> Result<Value, String> {
    Ok(match kind {
        Kind::String | Kind::Bytes => Value::String(String::new()),
        Kind::Bool => Value::Bool(false),
        Kind::Double | Kind::Float => Value::from(0.0),
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 => Value::from(0),
        Kind::Message(index) => decode_message(index, &[], depth + 1)?,
    })
}

/// Converts one wire value of the given kind to JSON.
fn value_of(kind: Kind, raw: Raw, depth: usize) -> Result<Value, String> {
    Ok(match (kind, raw) {
        // Truncating casts match Go's generated decoders (int32(v), uint32(v)).
        (Kind::Int32, Raw::Varint(v)) => Value::from(v as i32),
        (Kind::Int64, Raw::Varint(v)) => Value::from(v as i64),
        (Kind::Uint32, Raw::Varint(v)) => Value::from(v as u32),
        (Kind::Uint64, Raw::Varint(v)) => Value::from(v),
        (Kind::Bool, Raw::Varint(v)) => Value::Bool(v != 0),
        (Kind::Double, Raw::Fixed64(bits)) => float(f64::from_bits(bits))?,
        (Kind::Float, Raw::Fixed32(bits)) => float(f64::from(f32::from_bits(bits)))?,
        // Go does not validate proto2 strings; its JSON encoder replaces invalid UTF-8.
        (Kind::String, Raw::Len(bytes)) => Value::String(lossy(bytes)),
        (Kind::Bytes, Raw::Len(bytes)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        (Kind::Message(index), Raw::Len(bytes)) => decode_message(index, bytes, depth + 1)?,
        _ => return Err("protobuf value does not match its field's type".to_string()),
    })
}

fn float(value: f64) -> Result<Value, String> {
    Number::from_f64(value)
        .map(Value::Number)
        .ok_or_else(|| format!("{value} has no JSON form"))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The slot of field `tag`, with the field's definition.
fn slot_of<'s, 'a>(
    message: &Message,
    slots: &'s [Slot<'a>],
    tag: u32,
) -> Option<(&'static Field, &'s Slot<'a>)> {
    let i = message.fields.binary_search_by_key(&tag, |f| f.tag).ok()?;
    Some((message.fields.get(i)?, slots.get(i)?))
}

fn varint_field(message: &Message, slots: &[Slot], tag: u32) -> u64 {
    match slot_of(message, slots, tag) {
        Some((_, Slot::Scalar(Raw::Varint(v)))) => *v,
        _ => 0,
    }
}

fn bytes_field<'a>(message: &Message, slots: &[Slot<'a>], tag: u32) -> Option<&'a [u8]> {
    match slot_of(message, slots, tag) {
        Some((_, Slot::Scalar(Raw::Len(bytes)))) => Some(bytes),
        _ => None,
    }
}

/// The JSON of a singular message field, if present.
fn message_field(
    message: &Message,
    slots: &[Slot],
    tag: u32,
    depth: usize,
) -> Result<Option<Value>, String> {
    match slot_of(message, slots, tag) {
        Some((
            Field {
                kind: Kind::Message(index),
                ..
            },
            Slot::Chunks(chunks),
        )) => decode_message(*index, &merged(chunks), depth + 1).map(Some),
        _ => Ok(None),
    }
}

/// The JSON of each element of a repeated field.
fn repeated_field(
    message: &Message,
    slots: &[Slot],
    tag: u32,
    depth: usize,
) -> Result<Vec<Value>, String> {
    match slot_of(message, slots, tag) {
        Some((field, Slot::Many(elements))) => elements
            .iter()
            .map(|raw| value_of(field.kind, *raw, depth))
            .collect(),
        _ => Ok(Vec::new()),
    }
}

/// The JSON of the messages Go marshals by hand.
fn decode_special(
    message: &Message,
    special: Special,
    empty: bool,
    slots: &[Slot],
    depth: usize,
) -> Result<Value, String> {
    match special {
        Special::None => Err(format!("{} is not a special message", message.name)),
        // A zero time travels as an empty message and marshals to null.
        Special::Time | Special::MicroTime if empty => Ok(Value::Null),
        Special::Time | Special::MicroTime => {
            let seconds = varint_field(message, slots, 1) as i64;
            let nanos = varint_field(message, slots, 2) as i32;
            rfc3339(seconds, nanos, special == Special::MicroTime).map(Value::String)
        }
        Special::Duration => Ok(Value::String(go_duration(
            varint_field(message, slots, 1) as i64
        ))),
        Special::Quantity => Ok(Value::String(
            bytes_field(message, slots, 1).map_or_else(|| "0".to_string(), lossy),
        )),
        Special::IntOrString => match varint_field(message, slots, 1) {
            0 => Ok(Value::from(varint_field(message, slots, 2) as i32)),
            1 => Ok(Value::String(
                bytes_field(message, slots, 3)
                    .map(lossy)
                    .unwrap_or_default(),
            )),
            other => Err(format!("invalid IntOrString type {other}")),
        },
        Special::RawJson => match bytes_field(message, slots, 1) {
            None | Some([]) => Ok(Value::Null),
            Some(raw) => raw_json(raw, depth),
        },
        Special::StringList => Ok(Value::Array(repeated_field(message, slots, 1, depth)?)),
        Special::SchemaOrArray => {
            let schemas = repeated_field(message, slots, 2, depth)?;
            if !schemas.is_empty() {
                return Ok(Value::Array(schemas));
            }
            Ok(message_field(message, slots, 1, depth)?.unwrap_or(Value::Null))
        }
        Special::SchemaOrBool => match message_field(message, slots, 2, depth)? {
            Some(schema) => Ok(schema),
            None => Ok(Value::Bool(varint_field(message, slots, 1) != 0)),
        },
        Special::SchemaOrStringArray => {
            let property = repeated_field(message, slots, 2, depth)?;
            if !property.is_empty() {
                return Ok(Value::Array(property));
            }
            Ok(message_field(message, slots, 1, depth)?.unwrap_or(Value::Null))
        }
    }
}

/// Embedded objects (RawExtension) hold JSON; one written by a protobuf encoder may instead
/// hold a nested protobuf body, which is decoded the same way as the outer one.
fn raw_json(raw: &[u8], depth: usize) -> Result<Value, String> {
    if raw.starts_with(MAGIC) {
        if depth > MAX_DEPTH {
            return Err("protobuf message nesting is too deep".to_string());
        }
        return decode_envelope(raw, depth);
    }
    serde_json::from_slice(raw).map_err(|e| format!("embedded object is not valid JSON: {e}"))
}

/// Formats a Unix time as Go's metav1.Time (`2006-01-02T15:04:05Z`) or MicroTime
/// (`2006-01-02T15:04:05.000000Z`) does, in UTC.
fn rfc3339(seconds: i64, nanos: i32, micros: bool) -> Result<String, String> {
    // Go's time.Unix normalizes nanoseconds outside [0, 1e9) into the seconds.
    let nanos = i64::from(nanos);
    let seconds = seconds
        .checked_add(nanos.div_euclid(1_000_000_000))
        .ok_or("time out of range")?;
    let nanos = nanos.rem_euclid(1_000_000_000);
    // Go refuses to marshal years outside 0000-9999.
    const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(MIN..=MAX).contains(&seconds) {
        return Err(format!("time {seconds}s is outside years 0000-9999"));
    }
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
    if micros {
        out.push_str(&format!(".{:06}", nanos / 1000));
    }
    out.push('Z');
    Ok(out)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats nanoseconds as Go's time.Duration.String does: "1h2m3s", "1.5s", "500ms", "0s".
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let mut u = nanos.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        let (precision, unit) = match u {
            0..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "µs"),
            _ => (6, "ms"),
        };
        let (frac, whole) = fraction(u, precision);
        out = format!("{whole}{frac}{unit}");
    } else {
        let (frac, whole) = fraction(u, 9);
        u = whole;
        let seconds = format!("{}{frac}s", u % 60);
        u /= 60;
        if u > 0 {
            let minutes = u % 60;
            u /= 60;
            if u > 0 {
                out.push_str(&format!("{u}h"));
            }
            out.push_str(&format!("{minutes}m"));
        }
        out.push_str(&seconds);
    }
    if nanos < 0 {
        out.insert(0, '-');
    }
    out
}

/// Splits `value` into its last `precision` decimal digits, as ".ddd" without trailing zeros
/// (empty when they are all zero), and the remaining whole part.
fn fraction(value: u64, precision: u32) -> (String, u64) {
    let scale = 10u64.pow(precision);
    let (whole, frac) = (value / scale, value % scale);
    if frac == 0 {
        return (String::new(), whole);
    }
    let digits = format!("{frac:0width$}", width = precision as usize);
    (format!(".{}", digits.trim_end_matches('0')), whole)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::api::resource::Quantity;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::runtime::{RawExtension, TypeMeta, Unknown};
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    use proptest::prelude::*;
    use prost::Message as _;
    use serde_json::json;

    use super::*;

    /// Wraps an object's message in the envelope client-go writes.
    fn envelope(api_version: &str, kind: &str, object: &impl prost::Message) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(object.encode_to_vec()),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        [MAGIC, &unknown.encode_to_vec()].concat()
    }

    fn meta(name: &str, namespace: Option<&str>) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
            ..Default::default()
        }
    }

    fn int(i: i32) -> IntOrString {
        IntOrString {
            r#type: Some(0),
            int_val: Some(i),
            str_val: None,
        }
    }

    fn string(s: &str) -> IntOrString {
        IntOrString {
            r#type: Some(1),
            int_val: None,
            str_val: Some(s.into()),
        }
    }

    fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Quantity {
                        string: Some(v.to_string()),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn config_map() {
        let cm = core::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                labels: BTreeMap::from([("app".into(), "web".into())]),
                ..meta("x", Some("default"))
            }),
            data: BTreeMap::from([("a".into(), "b".into()), ("empty".into(), String::new())]),
            binary_data: BTreeMap::from([("bin".into(), vec![0, 1, 254, 255])]),
            immutable: Some(false),
        };
        let decoded = decode(&envelope("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            decoded,
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": { "name": "x", "namespace": "default", "labels": { "app": "web" } },
                "data": { "a": "b", "empty": "" },
                "immutable": false,
                "binaryData": { "bin": "AAH+/w==" },
            })
        );
        let typed: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(decoded).unwrap();
        assert_eq!(typed.binary_data.unwrap()["bin"].0, vec![0, 1, 254, 255]);
    }

    #[test]
    fn secret_with_binary_data() {
        let secret = core::Secret {
            metadata: Some(meta("s", None)),
            data: BTreeMap::from([
                ("key".into(), vec![0xde, 0xad, 0xbe, 0xef, 0]),
                ("none".into(), vec![]),
            ]),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let decoded = decode(&envelope("v1", "Secret", &secret)).unwrap();
        assert_eq!(
            decoded,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": { "name": "s" },
                "data": { "key": "3q2+7wA=", "none": "" },
                "type": "Opaque",
            })
        );
        let typed: k8s_openapi::api::core::v1::Secret = serde_json::from_value(decoded).unwrap();
        assert_eq!(
            typed.data.unwrap()["key"].0,
            vec![0xde, 0xad, 0xbe, 0xef, 0]
        );
    }

    #[test]
    fn namespace_with_zero_creation_timestamp() {
        // Go always writes ObjectMeta's non-pointer time; a zero time is an empty message.
        let ns = core::Namespace {
            metadata: Some(meta::ObjectMeta {
                creation_timestamp: Some(meta::Time::default()),
                ..meta("team-a", None)
            }),
            spec: Some(core::NamespaceSpec::default()),
            status: Some(core::NamespaceStatus::default()),
        };
        let decoded = decode(&envelope("v1", "Namespace", &ns)).unwrap();
        assert_eq!(
            decoded,
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": { "name": "team-a", "creationTimestamp": null },
                "spec": {},
                "status": {},
            })
        );
    }

    fn deployment_pb() -> apps::Deployment {
        let container = core::Container {
            name: Some("web".into()),
            image: Some("nginx:1.27".into()),
            ports: vec![
                core::ContainerPort {
                    container_port: Some(80),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
                core::ContainerPort {
                    name: Some("metrics".into()),
                    container_port: Some(9090),
                    ..Default::default()
                },
            ],
            resources: Some(core::ResourceRequirements {
                limits: quantities(&[("cpu", "500m"), ("memory", "128Mi")]),
                requests: quantities(&[("cpu", "0.1")]),
                claims: vec![],
            }),
            liveness_probe: Some(core::Probe {
                handler: Some(core::ProbeHandler {
                    http_get: Some(core::HttpGetAction {
                        path: Some("/healthz".into()),
                        port: Some(int(8080)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                initial_delay_seconds: Some(0),
                period_seconds: Some(10),
                ..Default::default()
            }),
            readiness_probe: Some(core::Probe {
                handler: Some(core::ProbeHandler {
                    tcp_socket: Some(core::TcpSocketAction {
                        port: Some(string("http")),
                        host: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                creation_timestamp: Some(meta::Time {
                    seconds: Some(1_700_000_000),
                    nanos: Some(0),
                }),
                generation: Some(0),
                ..meta("web", Some("default"))
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                selector: Some(meta::LabelSelector {
                    match_labels: labels.clone(),
                    match_expressions: vec![],
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels,
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![container],
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: Some("RollingUpdate".into()),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_unavailable: Some(int(0)),
                        max_surge: Some(string("25%")),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn deployment() {
        let decoded = decode(&envelope("apps/v1", "Deployment", &deployment_pb())).unwrap();
        let expected = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "generation": 0,
                "creationTimestamp": "2023-11-14T22:13:20Z",
            },
            "spec": {
                "replicas": 0,
                "selector": { "matchLabels": { "app": "web" } },
                "template": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": {
                        "containers": [{
                            "name": "web",
                            "image": "nginx:1.27",
                            "ports": [
                                { "containerPort": 80, "protocol": "TCP" },
                                { "name": "metrics", "containerPort": 9090 },
                            ],
                            "resources": {
                                "limits": { "cpu": "500m", "memory": "128Mi" },
                                "requests": { "cpu": "0.1" },
                            },
                            "livenessProbe": {
                                "httpGet": { "path": "/healthz", "port": 8080 },
                                "initialDelaySeconds": 0,
                                "periodSeconds": 10,
                            },
                            "readinessProbe": { "tcpSocket": { "port": "http" } },
                        }],
                    },
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": { "maxUnavailable": 0, "maxSurge": "25%" },
                },
            },
        });
        assert_eq!(decoded, expected);

        // The same object built in k8s-openapi form agrees with the decoded JSON.
        use k8s_openapi::api::{apps::v1 as oa_apps, core::v1 as oa_core};
        use k8s_openapi::apimachinery::pkg::{
            api::resource::Quantity as OaQuantity, apis::meta::v1 as oa_meta,
            util::intstr::IntOrString as OaIntOrString,
        };
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let q = |s: &str| OaQuantity(s.to_string());
        let built = oa_apps::Deployment {
            metadata: oa_meta::ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                generation: Some(0),
                creation_timestamp: Some(oa_meta::Time(
                    k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
                )),
                ..Default::default()
            },
            spec: Some(oa_apps::DeploymentSpec {
                replicas: Some(0),
                selector: oa_meta::LabelSelector {
                    match_labels: Some(labels.clone()),
                    match_expressions: None,
                },
                template: oa_core::PodTemplateSpec {
                    metadata: Some(oa_meta::ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(oa_core::PodSpec {
                        containers: vec![oa_core::Container {
                            name: "web".into(),
                            image: Some("nginx:1.27".into()),
                            ports: Some(vec![
                                oa_core::ContainerPort {
                                    container_port: 80,
                                    protocol: Some("TCP".into()),
                                    ..Default::default()
                                },
                                oa_core::ContainerPort {
                                    name: Some("metrics".into()),
                                    container_port: 9090,
                                    ..Default::default()
                                },
                            ]),
                            resources: Some(oa_core::ResourceRequirements {
                                limits: Some(BTreeMap::from([
                                    ("cpu".into(), q("500m")),
                                    ("memory".into(), q("128Mi")),
                                ])),
                                requests: Some(BTreeMap::from([("cpu".into(), q("0.1"))])),
                                claims: None,
                            }),
                            liveness_probe: Some(oa_core::Probe {
                                http_get: Some(oa_core::HTTPGetAction {
                                    path: Some("/healthz".into()),
                                    port: OaIntOrString::Int(8080),
                                    ..Default::default()
                                }),
                                initial_delay_seconds: Some(0),
                                period_seconds: Some(10),
                                ..Default::default()
                            }),
                            readiness_probe: Some(oa_core::Probe {
                                tcp_socket: Some(oa_core::TCPSocketAction {
                                    port: OaIntOrString::String("http".into()),
                                    host: None,
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                strategy: Some(oa_apps::DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(oa_apps::RollingUpdateDeployment {
                        max_unavailable: Some(OaIntOrString::Int(0)),
                        max_surge: Some(OaIntOrString::String("25%".into())),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let typed: oa_apps::Deployment = serde_json::from_value(decoded).unwrap();
        assert_eq!(typed, built);
    }

    #[test]
    fn inline_structs_and_repeated_ints() {
        let pod = core::Pod {
            metadata: Some(meta("p", None)),
            spec: Some(core::PodSpec {
                volumes: vec![core::Volume {
                    name: Some("cfg".into()),
                    volume_source: Some(core::VolumeSource {
                        config_map: Some(core::ConfigMapVolumeSource {
                            local_object_reference: Some(core::LocalObjectReference {
                                name: Some("x".into()),
                            }),
                            default_mode: Some(0o644),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                }],
                ..Default::default()
            }),
            status: None,
        };
        let decoded = decode(&envelope("v1", "Pod", &pod)).unwrap();
        assert_eq!(
            decoded["spec"]["volumes"],
            json!([{ "name": "cfg", "configMap": { "name": "x", "defaultMode": 420 } }])
        );

        // Job's exit codes are `repeated int32` written unpacked; a packed writer must agree.
        let requirement = k8s_pb::api::batch::v1::PodFailurePolicyOnExitCodesRequirement {
            container_name: None,
            operator: Some("In".into()),
            values: vec![1, -2, 300],
        };
        let unpacked = requirement.encode_to_vec();
        let mut packed = Vec::new();
        prost::encoding::string::encode(2, &"In".to_string(), &mut packed);
        prost::encoding::int32::encode_packed(3, &[1, -2, 300], &mut packed);
        assert_ne!(unpacked, packed);
        let index = find("k8s.io.api.batch.v1.PodFailurePolicyOnExitCodesRequirement");
        let expected = json!({ "operator": "In", "values": [1, -2, 300] });
        assert_eq!(decode_message(index, &unpacked, 0).unwrap(), expected);
        assert_eq!(decode_message(index, &packed, 0).unwrap(), expected);
    }

    fn find(name: &str) -> usize {
        schema::MESSAGES
            .iter()
            .position(|m| m.name == name)
            .unwrap()
    }

    #[test]
    fn kubectl_subresource_bodies() {
        let eviction = k8s_pb::api::policy::v1::Eviction {
            metadata: Some(meta("p", Some("default"))),
            delete_options: Some(meta::DeleteOptions {
                grace_period_seconds: Some(-1),
                ..Default::default()
            }),
        };
        assert_eq!(
            decode(&envelope("policy/v1", "Eviction", &eviction)).unwrap(),
            json!({
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": { "name": "p", "namespace": "default" },
                "deleteOptions": { "gracePeriodSeconds": -1 },
            })
        );

        let token = k8s_pb::api::authentication::v1::TokenRequest {
            metadata: Some(meta::ObjectMeta::default()),
            spec: Some(k8s_pb::api::authentication::v1::TokenRequestSpec {
                audiences: vec!["https://kubernetes.default.svc".into()],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            }),
            status: Some(Default::default()),
        };
        assert_eq!(
            decode(&envelope(
                "authentication.k8s.io/v1",
                "TokenRequest",
                &token
            ))
            .unwrap(),
            json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "metadata": {},
                "spec": { "audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600 },
                "status": {},
            })
        );

        use k8s_pb::api::authorization::v1 as authz;
        let review = authz::SelfSubjectAccessReview {
            metadata: Some(meta::ObjectMeta::default()),
            spec: Some(authz::SelfSubjectAccessReviewSpec {
                resource_attributes: Some(authz::ResourceAttributes {
                    namespace: Some("default".into()),
                    verb: Some("create".into()),
                    resource: Some("pods".into()),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            }),
            status: None,
        };
        let decoded = decode(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            &review,
        ))
        .unwrap();
        assert_eq!(
            decoded["spec"],
            json!({ "resourceAttributes": { "namespace": "default", "verb": "create", "resource": "pods" } })
        );

        // Options travel under the group version of the request they belong to.
        let options = meta::DeleteOptions {
            propagation_policy: Some("Background".into()),
            ..Default::default()
        };
        assert_eq!(
            decode(&envelope("v1", "DeleteOptions", &options)).unwrap(),
            json!({ "apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background" })
        );
    }

    #[test]
    fn embedded_raw_json_and_schemas() {
        let revision = apps::ControllerRevision {
            metadata: Some(meta("r", None)),
            data: Some(RawExtension {
                raw: Some(br#"{"spec":{"template":{"x":1}}}"#.to_vec()),
            }),
            revision: Some(3),
        };
        let decoded = decode(&envelope("apps/v1", "ControllerRevision", &revision)).unwrap();
        assert_eq!(
            decoded["data"],
            json!({ "spec": { "template": { "x": 1 } } })
        );
        assert_eq!(decoded["revision"], json!(3));

        use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
        let leaf = ext::JsonSchemaProps {
            r#type: Some("string".into()),
            ..Default::default()
        };
        let schema = ext::JsonSchemaProps {
            r#type: Some("object".into()),
            properties: BTreeMap::from([(
                "list".into(),
                ext::JsonSchemaProps {
                    r#type: Some("array".into()),
                    items: Some(Box::new(ext::JsonSchemaPropsOrArray {
                        schema: Some(Box::new(leaf.clone())),
                        j_son_schemas: vec![],
                    })),
                    default: Some(ext::Json {
                        raw: Some(br#"["a"]"#.to_vec()),
                    }),
                    x_kubernetes_list_type: Some("set".into()),
                    ..Default::default()
                },
            )]),
            additional_properties: Some(Box::new(ext::JsonSchemaPropsOrBool {
                allows: Some(false),
                schema: None,
            })),
            x_kubernetes_preserve_unknown_fields: Some(true),
            r#enum: vec![ext::Json {
                raw: Some(b"1".to_vec()),
            }],
            ..Default::default()
        };
        let index =
            find("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaProps");
        assert_eq!(
            decode_message(index, &schema.encode_to_vec(), 0).unwrap(),
            json!({
                "type": "object",
                "enum": [1],
                "properties": {
                    "list": {
                        "type": "array",
                        "default": ["a"],
                        "items": { "type": "string" },
                        "x-kubernetes-list-type": "set",
                    },
                },
                "additionalProperties": false,
                "x-kubernetes-preserve-unknown-fields": true,
            })
        );
    }

    #[test]
    fn unknown_fields_are_skipped_and_errors_are_named() {
        let mut raw = core::ConfigMap {
            metadata: Some(meta("x", None)),
            ..Default::default()
        }
        .encode_to_vec();
        prost::encoding::string::encode(999, &"future".to_string(), &mut raw);
        prost::encoding::fixed32::encode(998, &7, &mut raw);
        let index = find("k8s.io.api.core.v1.ConfigMap");
        assert_eq!(
            decode_message(index, &raw, 0).unwrap(),
            json!({ "metadata": { "name": "x" } })
        );

        let cm = core::ConfigMap::default();
        let err = decode(&envelope("example.com/v1", "Widget", &cm)).unwrap_err();
        assert!(
            err.contains("example.com/v1") && err.contains("Widget"),
            "{err}"
        );
        assert!(decode(b"{\"kind\":\"ConfigMap\"}").is_err());
        assert!(decode(b"k8s\0").is_err());
        // A field with the wrong wire type is an error, as in Go.
        let mut bad = Vec::new();
        prost::encoding::int32::encode(1, &5, &mut bad);
        assert!(decode_message(index, &bad, 0).is_err());
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(rfc3339(0, 0, false).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(951_782_400, 0, false).unwrap(),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(rfc3339(-1, 0, false).unwrap(), "1969-12-31T23:59:59Z");
        assert_eq!(
            rfc3339(1_700_000_000, 999_999_999, false).unwrap(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(1_700_000_000, 123_456_789, true).unwrap(),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            rfc3339(1_700_000_000, 0, true).unwrap(),
            "2023-11-14T22:13:20.000000Z"
        );
        assert_eq!(
            rfc3339(253_402_300_799, 0, false).unwrap(),
            "9999-12-31T23:59:59Z"
        );
        assert!(rfc3339(253_402_300_800, 0, false).is_err());
        assert!(rfc3339(i64::MAX, i32::MAX, false).is_err());

        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (500_000_000, "500ms"),
            (1_500_000_000, "1.5s"),
            (60_000_000_000, "1m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_000_000_000, "1h2m3s"),
            (-2_000_000_000, "-2s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ];
        for (nanos, text) in cases {
            assert_eq!(go_duration(nanos), text, "{nanos}ns");
        }
        let index = find("k8s.io.apimachinery.pkg.apis.meta.v1.Duration");
        let d = meta::Duration {
            duration: Some(90_000_000_000),
        };
        assert_eq!(
            decode_message(index, &d.encode_to_vec(), 0).unwrap(),
            json!("1m30s")
        );
        let index = find("k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime");
        let t = meta::MicroTime {
            seconds: Some(1_700_000_000),
            nanos: Some(5_000),
        };
        assert_eq!(
            decode_message(index, &t.encode_to_vec(), 0).unwrap(),
            json!("2023-11-14T22:13:20.000005Z")
        );
    }

    #[test]
    fn every_kind_in_the_table_is_sorted_and_known() {
        assert!(
            schema::KINDS
                .windows(2)
                .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1))
        );
        assert!(
            schema::ANY_VERSION_KINDS
                .windows(2)
                .all(|w| w[0].0 < w[1].0)
        );
        assert!(schema::MESSAGES.windows(2).all(|w| w[0].name < w[1].name));
        for message in schema::MESSAGES {
            assert!(
                message.fields.windows(2).all(|w| w[0].tag < w[1].tag),
                "{}",
                message.name
            );
            for field in message.fields {
                if let Kind::Message(i) = field.kind {
                    assert!(i < schema::MESSAGES.len());
                }
            }
        }
        // An empty body of every top-level kind decodes.
        for (api_version, kind, _) in schema::KINDS {
            let body = envelope(api_version, kind, &core::ConfigMap::default());
            let decoded = decode(&body).unwrap();
            assert_eq!(decoded["kind"], json!(kind));
        }
    }

    /// Bodies as kubectl v1.32.4 sent them (hex dumps from `kubectl -v=9`).
    const KUBECTL_BODIES: &[(&str, &str)] = &[
        (
            "token",
            "6b3873000a280a1861757468656e7469636174696f6e2e6b38732e696f2f7631120c546f6b656e52657175657374121d\
             0a100a0012001a0022002a00320038004200120320d8041a040a0012001a002200",
        ),
        (
            "ssar",
            "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a65637441636365\
             7373526576696577123c0a100a0012001a0022002a00320038004200121e0a1c0a0470626e7312066372656174651a00\
             22002a04706f647332003a001a08080012001a0020001a002200",
        ),
        (
            "ssr",
            "6b3873000a2d0a1861757468656e7469636174696f6e2e6b38732e696f2f7631121153656c665375626a656374526576\
             696577121a0a100a0012001a0022002a0032003800420012060a040a0012001a002200",
        ),
        (
            "pdb",
            "6b3873000a200a09706f6c6963792f76311213506f6444697372757074696f6e427564676574123e0a180a0470646231\
             12001a0470626e7322002a0032003800420012160a06080010011a00120c0a0a0a0361707012037765621a0a08001800\
             2000280030001a002200",
        ),
        (
            "svcnp",
            "6b3873000a0d0a027631120753657276696365126e0a230a036e703112001a0470626e7322002a003200380042005a0a\
             0a0361707012036e703112430a1d0a0738302d38303830120354435018502207080010903f1a002880eb01120a0a0361\
             707012036e70311a0022084e6f6465506f72743a00420052005a00600068001a020a001a002200",
        ),
        (
            "deployment",
            "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412c6010a250a047765623312001a0470626e732200\
             2a003200380042005a0b0a03617070120477656233128e010803120d0a0b0a036170701204776562331a730a1d0a0012\
             001a0022002a003200380042005a0b0a03617070120477656233125212340a056e67696e78120a6e67696e783a312e32\
             372a00320b0a00100018903f22002a0042006a007200800100880100900100a201001a00320042004a00520058006000\
             68008201008a01009a0100c2010022020a00280038001a0c0800100018002000280038001a002200",
        ),
        (
            "secret",
            "6b3873000a0c0a027631120653656372657412220a160a02733212001a0470626e7322002a0032003800420012060a01\
             6b1201761a001a002200",
        ),
        (
            "cronjob",
            "6b3873000a130a0862617463682f7631120743726f6e4a6f6212b0010a170a03636a3212001a0470626e7322002a0032\
             00380042001292010a0b2a2f35202a202a202a202a1a002a80010a130a03636a3212001a0022002a0032003800420012\
             6932670a100a0012001a0022002a003200380042001253122c0a03636a32120762757379626f781a046563686f1a0268\
             692a0042006a007200800100880100900100a201001a094f6e4661696c757265320042004a0052005800600068008201\
             008a01009a0100c201001a001a002200",
        ),
    ];

    fn kubectl_body(name: &str) -> Value {
        let (_, hex) = KUBECTL_BODIES.iter().find(|(n, _)| *n == name).unwrap();
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        decode(&bytes).unwrap()
    }

    #[test]
    fn bodies_sent_by_kubectl() {
        let token = kubectl_body("token");
        assert_eq!(token["kind"], json!("TokenRequest"));
        assert_eq!(token["spec"], json!({ "expirationSeconds": 600 }));

        let review = kubectl_body("ssar");
        assert_eq!(
            review["spec"]["resourceAttributes"]["verb"],
            json!("create")
        );
        assert_eq!(
            review["spec"]["resourceAttributes"]["resource"],
            json!("pods")
        );
        assert_eq!(
            review["spec"]["resourceAttributes"]["namespace"],
            json!("pbns")
        );
        assert_eq!(kubectl_body("ssr")["kind"], json!("SelfSubjectReview"));

        let pdb = kubectl_body("pdb");
        assert_eq!(
            pdb["spec"],
            json!({ "minAvailable": 1, "selector": { "matchLabels": { "app": "web" } } })
        );

        let service = kubectl_body("svcnp");
        assert_eq!(service["spec"]["type"], json!("NodePort"));
        assert_eq!(
            service["spec"]["ports"],
            json!([{ "name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080 }])
        );

        let deployment = kubectl_body("deployment");
        assert_eq!(deployment["metadata"]["creationTimestamp"], Value::Null);
        assert_eq!(deployment["spec"]["replicas"], json!(3));
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], json!("nginx:1.27"));
        assert_eq!(container["ports"][0]["containerPort"], json!(8080));
        let _: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(deployment).unwrap();

        assert_eq!(kubectl_body("secret")["data"], json!({ "k": "dg==" }));
        let cronjob = kubectl_body("cronjob");
        assert_eq!(cronjob["spec"]["schedule"], json!("*/5 * * * *"));
        let job_spec = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(job_spec["containers"][0]["command"], json!(["echo", "hi"]));
        assert_eq!(job_spec["restartPolicy"], json!("OnFailure"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&body);
            let _ = decode(&[MAGIC, &body].concat());
            for index in [0, find("k8s.io.api.apps.v1.Deployment"), find("k8s.io.api.core.v1.PodSpec")] {
                let _ = decode_message(index, &body, 0);
            }
        }

        #[test]
        fn mutated_messages_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
        ) {
            let mut body = envelope("apps/v1", "Deployment", &deployment_pb());
            for (at, byte, op) in edits {
                let i = at.index(body.len() + 1);
                match op {
                    0 if i < body.len() => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ if i < body.len() => { body.remove(i); }
                    _ => {}
                }
            }
            let _ = decode(&body);
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        // JSONSchemaProps.not nests without bound; each level wraps the one inside.
        let index =
            find("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaProps");
        let not_tag = schema::MESSAGES[index]
            .fields
            .iter()
            .find(|f| f.json == "not")
            .unwrap()
            .tag;
        let mut body: Vec<u8> = Vec::new();
        for _ in 0..(MAX_DEPTH * 3) {
            let mut outer = Vec::new();
            prost::encoding::bytes::encode(not_tag, &body, &mut outer);
            body = outer;
        }
        assert!(
            decode_message(index, &body, 0)
                .unwrap_err()
                .contains("too deep")
        );
    }
}
