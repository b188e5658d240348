//! Sets of field paths, and their `FieldsV1` encoding in `managedFields`.
//!
//! A path walks an object: a map field (`f:name`), a list item found by its key fields
//! (`k:{"name":"c"}`), a member of a set list (`v:"x"`), or an index (`i:0`). A set records
//! both the leaves a manager owns and, with the `.` marker, the list items and maps it created
//! as a whole — the encoding the Kubernetes API uses, so clients can read it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    Field(String),
    /// A list item identified by its key fields, rendered as compact JSON.
    Key(String),
    /// A member of a set list, as compact JSON.
    Value(String),
    Index(usize),
}

impl Element {
    /// The `FieldsV1` key of this step.
    pub fn encode(&self) -> String {
        match self {
            Element::Field(f) => format!("f:{f}"),
            Element::Key(k) => format!("k:{k}"),
            Element::Value(v) => format!("v:{v}"),
            Element::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Option<Element> {
        let (kind, rest) = s.split_at_checked(2)?;
        match kind {
            "f:" => Some(Element::Field(rest.to_string())),
            "k:" => Some(Element::Key(rest.to_string())),
            "v:" => Some(Element::Value(rest.to_string())),
            "i:" => rest.parse().ok().map(Element::Index),
            _ => None,
        }
    }

    /// How upstream prints a path element in conflict messages.
    pub fn display(&self) -> String {
        match self {
            Element::Field(f) => format!(".{f}"),
            Element::Key(k) => {
                let fields: BTreeMap<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        )
                    })
                    .collect();
                format!("[{}]", parts.join(","))
            }
            Element::Value(v) => format!("[={v}]"),
            Element::Index(i) => format!("[{i}]"),
        }
    }
}

pub type Path = Vec<Element>;

pub fn display_path(path: &[Element]) -> String {
    path.iter().map(Element::display).collect()
}

/// A set of paths, as a trie. A node is a member itself when `member` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<Element, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// Whether the empty path, the node itself, is a member.
    pub fn is_member(&self) -> bool {
        self.member
    }

    /// The steps below this node, in order.
    pub fn children(&self) -> impl Iterator<Item = (&Element, &FieldSet)> {
        self.children.iter()
    }

    pub fn insert(&mut self, path: &[Element]) {
        match path.split_first() {
            None => self.member = true,
            Some((head, rest)) => self.children.entry(head.clone()).or_default().insert(rest),
        }
    }

    pub fn contains(&self, path: &[Element]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((head, rest)) => self.children.get(head).is_some_and(|c| c.contains(rest)),
        }
    }

    pub fn remove(&mut self, path: &[Element]) {
        match path.split_first() {
            None => self.member = false,
            Some((head, rest)) => {
                if let Some(child) = self.children.get_mut(head) {
                    child.remove(rest);
                    if child.is_empty() {
                        self.children.remove(head);
                    }
                }
            }
        }
    }

    /// Every member path, in order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (element, child) in &self.children {
            prefix.push(element.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The members of `self` that are not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet::default();
        for path in self.paths() {
            if !other.contains(&path) {
                out.insert(&path);
            }
        }
        out
    }

    pub fn union(&mut self, other: &FieldSet) {
        for path in other.paths() {
            self.insert(&path);
        }
    }

    /// Whether any member lies at or below `path`.
    pub fn has_under(&self, path: &[Element]) -> bool {
        match path.split_first() {
            None => !self.is_empty(),
            Some((head, rest)) => self.children.get(head).is_some_and(|c| c.has_under(rest)),
        }
    }

    /// The `FieldsV1` JSON form.
    pub fn to_fields_v1(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        for (element, child) in &self.children {
            map.insert(element.encode(), child.to_fields_v1());
        }
        Value::Object(map)
    }

    /// Reads the `FieldsV1` JSON form; unknown entries are ignored.
    pub fn from_fields_v1(value: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Some(map) = value.as_object() {
            for (key, child) in map {
                if key == "." {
                    set.member = true;
                    continue;
                }
                if let Some(element) = Element::decode(key) {
                    let mut child_set = FieldSet::from_fields_v1(child);
                    if child.as_object().is_some_and(|m| m.is_empty()) {
                        child_set.member = true;
                    }
                    set.children.insert(element, child_set);
                }
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_v1_round_trips() {
        let v = json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}}}}});
        let set = FieldSet::from_fields_v1(&v);
        assert!(set.contains(&[
            Element::Field("metadata".into()),
            Element::Field("labels".into()),
            Element::Field("app".into())
        ]));
        assert!(set.contains(&[
            Element::Field("spec".into()),
            Element::Field("containers".into()),
            Element::Key("{\"name\":\"c\"}".into())
        ]));
        assert_eq!(set.to_fields_v1(), v);
    }

    #[test]
    fn difference_and_display() {
        let mut a = FieldSet::default();
        let p1 = vec![Element::Field("data".into()), Element::Field("a".into())];
        let p2 = vec![
            Element::Field("spec".into()),
            Element::Field("ports".into()),
            Element::Key("{\"port\":80}".into()),
            Element::Field("name".into()),
        ];
        a.insert(&p1);
        a.insert(&p2);
        let mut b = FieldSet::default();
        b.insert(&p1);
        assert_eq!(a.difference(&b).paths(), vec![p2.clone()]);
        assert_eq!(display_path(&p2), ".spec.ports[port=80].name");
        a.remove(&p2);
        assert_eq!(a, b);
    }
}
