//! The type graph strategic merge walks: which message a JSON field holds, found in the
//! generated protobuf schema table (`protobuf/schema.rs`).
//!
//! Only the graph is read here: field JSON names, nested messages, map values and embedded
//! (inline) structs; wire details such as tags and scalar kinds are not used.

use crate::protobuf::{Kind, Shape, Special, schema};

/// Where a JSON value sits in the type graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Node {
    /// An object of the message at this index.
    Message(usize),
    /// A JSON object whose values are all of one type (labels, resource lists, `data`).
    MapOf(Option<usize>),
    /// No structure known: scalars, raw JSON, or a field the schema does not have.
    Opaque,
}

/// A field found in a message: the node of its value (of each element, for a list) and the
/// full name of the message that declares it (for an inline field, the embedded message).
pub(super) struct Found {
    pub node: Node,
    pub owner: &'static str,
}

/// The top-level message of a kind, if it is a built-in one.
pub(super) fn top_level(api_version: &str, kind: &str) -> Option<Node> {
    let i = schema::KINDS
        .binary_search_by(|(v, k, _)| (*v, *k).cmp(&(api_version, kind)))
        .ok()?;
    schema::KINDS.get(i).map(|(_, _, m)| message_node(*m))
}

/// The full name of the message a node stands for.
pub(super) fn message_name(node: Node) -> Option<&'static str> {
    match node {
        Node::Message(i) => schema::MESSAGES.get(i).map(|m| m.name),
        _ => None,
    }
}

/// The node of a message by full name; lets tests check the merge-key table against the
/// schema.
#[cfg(test)]
pub(super) fn message_node_by_name(name: &str) -> Option<Node> {
    let i = schema::MESSAGES
        .binary_search_by(|m| m.name.cmp(name))
        .ok()?;
    Some(message_node(i))
}

/// The node of the value under `key` in a value at `node`.
pub(super) fn child(node: Node, key: &str) -> Option<Found> {
    match node {
        Node::Message(i) => find_field(i, key, 0),
        Node::MapOf(value) => Some(Found {
            node: value.map_or(Node::Opaque, message_node),
            owner: "",
        }),
        Node::Opaque => None,
    }
}

/// Inline structs nest at most a couple of levels; the bound only guards against a cycle.
const MAX_INLINE_DEPTH: usize = 8;

fn find_field(index: usize, key: &str, depth: usize) -> Option<Found> {
    let message = schema::MESSAGES.get(index)?;
    for field in message.fields {
        if let Shape::Inline = field.shape {
            if let (Kind::Message(inner), true) = (field.kind, depth < MAX_INLINE_DEPTH)
                && let Some(found) = find_field(inner, key, depth + 1)
            {
                return Some(found);
            }
            continue;
        }
        if field.json != key {
            continue;
        }
        let node = match (field.shape, field.kind) {
            (Shape::Map(_), Kind::Message(value)) => Node::MapOf(Some(value)),
            (Shape::Map(_), _) => Node::MapOf(None),
            (_, Kind::Message(m)) => message_node(m),
            _ => Node::Opaque,
        };
        return Some(Found {
            node,
            owner: message.name,
        });
    }
    None
}

/// Messages with a hand-written JSON form (times, quantities, raw JSON) are opaque.
fn message_node(index: usize) -> Node {
    match schema::MESSAGES.get(index) {
        Some(m) if m.special == Special::None => Node::Message(index),
        _ => Node::Opaque,
    }
}
