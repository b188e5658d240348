//! Namespace permissions as Visor presents them — `view`, `edit`, `owner` — and the upstream
//! roles they stand for: each is a RoleBinding in the namespace to a default ClusterRole
//! (`view` → `view`, `edit` → `edit`, `owner` → `admin`), so what a permission allows is
//! exactly what upstream's role allows, and `kubectl auth can-i` explains it.
//!
//! [`role_binding`] builds the binding; whoever grants a permission (the namespace
//! configuration controller, an admin with kubectl) creates it through the API.

use serde_json::{Value, json};

/// A permission on one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespacePermission {
    /// Read everything but secrets.
    View,
    /// Create, change and delete workloads and their configuration; read secrets.
    Edit,
    /// Edit, plus roles and bindings within the namespace (granting others access).
    Owner,
}

/// Whether a permission is granted to a user or to a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectKind {
    User,
    Group,
}

impl NamespacePermission {
    /// Parses `view`, `edit` or `owner`.
    pub fn parse(text: &str) -> Option<NamespacePermission> {
        match text {
            "view" => Some(NamespacePermission::View),
            "edit" => Some(NamespacePermission::Edit),
            "owner" => Some(NamespacePermission::Owner),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NamespacePermission::View => "view",
            NamespacePermission::Edit => "edit",
            NamespacePermission::Owner => "owner",
        }
    }

    /// The default ClusterRole the permission binds.
    pub fn cluster_role(self) -> &'static str {
        match self {
            NamespacePermission::View => "view",
            NamespacePermission::Edit => "edit",
            NamespacePermission::Owner => "admin",
        }
    }
}

/// The RoleBinding granting `permission` on `namespace` to a user or group, named
/// `visor-PERMISSION-user|group-NAME` so that granting twice is one object.
pub fn role_binding(
    namespace: &str,
    permission: NamespacePermission,
    kind: SubjectKind,
    subject: &str,
) -> Value {
    let (kind_name, short) = match kind {
        SubjectKind::User => ("User", "user"),
        SubjectKind::Group => ("Group", "group"),
    };
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": format!("visor-{}-{short}-{subject}", permission.name()),
            "namespace": namespace,
            "labels": { "visor.io/permission": permission.name() },
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": permission.cluster_role(),
        },
        "subjects": [{
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": kind_name,
            "name": subject,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_map_onto_the_default_roles() {
        let cases = [("view", "view"), ("edit", "edit"), ("owner", "admin")];
        for (permission, role) in cases {
            let p = NamespacePermission::parse(permission).unwrap();
            let binding = role_binding("team-a", p, SubjectKind::Group, "devs");
            assert_eq!(binding["roleRef"]["name"], role);
            assert_eq!(binding["metadata"]["namespace"], "team-a");
            assert_eq!(binding["subjects"][0]["kind"], "Group");
        }
        assert!(NamespacePermission::parse("admin").is_none());
    }
}
