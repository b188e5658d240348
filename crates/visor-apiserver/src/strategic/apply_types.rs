//! Built-in kinds' shapes for server-side apply: the same type graph and merge keys strategic
//! merge uses, seen as [`TypeInfo`]. A list tagged with a merge key is associative on that key,
//! a tagged list of scalars is a set, and every other list is atomic — as upstream's
//! `x-kubernetes-list-type` annotations of the built-in types say, with the merge key standing
//! in for the list-map keys.

use crate::ssa::types::{Deduced, ListType, TypeInfo};

use super::graph::{self, Node};
use super::keys;

/// A position in a built-in kind's type. For a list field, `node` is the type of its items.
pub struct BuiltinType {
    node: Node,
    list: ListType,
}

/// The type of a built-in kind, if `apiVersion`/`kind` names one.
pub fn for_kind(api_version: &str, kind: &str) -> Option<BuiltinType> {
    graph::top_level(api_version, kind).map(|node| BuiltinType {
        node,
        list: ListType::Atomic,
    })
}

impl TypeInfo for BuiltinType {
    fn field(&self, name: &str) -> Box<dyn TypeInfo> {
        let Some(found) = graph::child(self.node, name) else {
            return Box::new(Deduced);
        };
        let list = match keys::lookup(found.owner, name) {
            Some((strategy, key)) if strategy.merges_lists() && key.is_empty() => ListType::Set,
            Some((strategy, key)) if strategy.merges_lists() => {
                ListType::Map(vec![key.to_string()])
            }
            _ => ListType::Atomic,
        };
        Box::new(BuiltinType {
            node: found.node,
            list,
        })
    }

    fn items(&self) -> Box<dyn TypeInfo> {
        Box::new(BuiltinType {
            node: self.node,
            list: ListType::Atomic,
        })
    }

    fn list_type(&self) -> ListType {
        self.list.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_lists_have_upstream_types() {
        let deployment = for_kind("apps/v1", "Deployment").unwrap();
        let pod_spec = deployment.field("spec").field("template").field("spec");
        let containers = pod_spec.field("containers");
        assert_eq!(containers.list_type(), ListType::Map(vec!["name".into()]));
        assert_eq!(
            containers.items().field("env").list_type(),
            ListType::Map(vec!["name".into()])
        );
        assert_eq!(
            containers.items().field("ports").list_type(),
            ListType::Map(vec!["containerPort".into()])
        );
        assert_eq!(
            containers.items().field("args").list_type(),
            ListType::Atomic
        );
        assert_eq!(pod_spec.field("tolerations").list_type(), ListType::Atomic);
        assert_eq!(
            deployment.field("metadata").field("finalizers").list_type(),
            ListType::Set
        );
        assert!(for_kind("example.com/v1", "Widget").is_none());
    }
}
