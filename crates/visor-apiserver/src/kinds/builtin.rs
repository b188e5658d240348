//! The built-in Kubernetes kinds Visor serves, one entry each.

use k8s_openapi::api::{
    apps, authentication, authorization, batch, coordination, core, events, policy, rbac,
    scheduling, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;

use super::{ResourceDef, SharedStorage, Subresource::*, defaults, printers, validation};

/// Every built-in resource, in the order discovery lists them.
pub fn resources() -> Vec<ResourceDef> {
    vec![
        // core/v1
        ResourceDef::new("", "v1", "Namespace", "namespaces", false)
            .short_names(&["ns"])
            .subresources(&[Status, Finalize])
            .fields(&["status.phase"])
            .label_names()
            .typed::<core::v1::Namespace>()
            .columns(printers::namespace())
            .defaulter(defaults::namespace),
        ResourceDef::new("", "v1", "Pod", "pods", true)
            .short_names(&["po"])
            .categories(&["all"])
            .subresources(&[Status, Binding, Eviction, Log, Exec, PortForward])
            .fields(&[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ])
            .typed::<core::v1::Pod>()
            .columns(printers::pod())
            .defaulter(defaults::pod)
            .validator(validation::pod),
        ResourceDef::new("", "v1", "Node", "nodes", false)
            .short_names(&["no"])
            .subresources(&[Status])
            .fields(&["spec.unschedulable"])
            .typed::<core::v1::Node>()
            .columns(printers::node()),
        ResourceDef::new("", "v1", "Service", "services", true)
            .short_names(&["svc"])
            .categories(&["all"])
            .subresources(&[Status])
            .label_names()
            .typed::<core::v1::Service>()
            .columns(printers::service())
            .defaulter(defaults::service)
            .validator(validation::service),
        ResourceDef::new("", "v1", "Endpoints", "endpoints", true)
            .short_names(&["ep"])
            .typed::<core::v1::Endpoints>()
            .columns(printers::endpoints()),
        ResourceDef::new("", "v1", "ConfigMap", "configmaps", true)
            .short_names(&["cm"])
            .typed::<core::v1::ConfigMap>()
            .columns(printers::configmap())
            .validator(validation::configmap),
        ResourceDef::new("", "v1", "Secret", "secrets", true)
            .fields(&["type"])
            .typed::<core::v1::Secret>()
            .columns(printers::secret())
            .defaulter(defaults::secret)
            .validator(validation::secret),
        ResourceDef::new("", "v1", "ServiceAccount", "serviceaccounts", true)
            .short_names(&["sa"])
            .typed::<core::v1::ServiceAccount>()
            .columns(printers::serviceaccount()),
        ResourceDef::new("", "v1", "Event", "events", true)
            .short_names(&["ev"])
            .fields(&[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ])
            .typed::<core::v1::Event>()
            .columns(printers::event()),
        ResourceDef::new("", "v1", "ResourceQuota", "resourcequotas", true)
            .short_names(&["quota"])
            .subresources(&[Status])
            // The quota controller watches quotas as metadata and recounts when this moves.
            .generation()
            .typed::<core::v1::ResourceQuota>()
            .columns(printers::resourcequota()),
        ResourceDef::new("", "v1", "LimitRange", "limitranges", true)
            .short_names(&["limits"])
            .typed::<core::v1::LimitRange>()
            .columns(printers::limitrange()),
        ResourceDef::new("", "v1", "PersistentVolume", "persistentvolumes", false)
            .short_names(&["pv"])
            .subresources(&[Status])
            .typed::<core::v1::PersistentVolume>()
            .columns(printers::persistentvolume())
            .defaulter(defaults::persistentvolume),
        ResourceDef::new(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
        )
        .short_names(&["pvc"])
        .subresources(&[Status])
        .typed::<core::v1::PersistentVolumeClaim>()
        .columns(printers::persistentvolumeclaim())
        .defaulter(defaults::persistentvolumeclaim)
        .validator(validation::persistentvolumeclaim),
        ResourceDef::new("", "v1", "PodTemplate", "podtemplates", true)
            .typed::<core::v1::PodTemplate>()
            .columns(printers::podtemplate()),
        // apps/v1
        ResourceDef::new("apps", "v1", "Deployment", "deployments", true)
            .short_names(&["deploy"])
            .categories(&["all"])
            .subresources(&[Status, Scale])
            .generation()
            .typed::<apps::v1::Deployment>()
            .columns(printers::deployment())
            .defaulter(defaults::deployment)
            .validator(validation::deployment),
        ResourceDef::new("apps", "v1", "ReplicaSet", "replicasets", true)
            .short_names(&["rs"])
            .categories(&["all"])
            .subresources(&[Status, Scale])
            .fields(&["status.replicas"])
            .generation()
            .typed::<apps::v1::ReplicaSet>()
            .columns(printers::replicaset())
            .defaulter(defaults::replicaset)
            .validator(validation::replicaset),
        ResourceDef::new("apps", "v1", "DaemonSet", "daemonsets", true)
            .short_names(&["ds"])
            .categories(&["all"])
            .subresources(&[Status])
            .generation()
            .typed::<apps::v1::DaemonSet>()
            .columns(printers::daemonset())
            .defaulter(defaults::daemonset)
            .validator(validation::daemonset),
        ResourceDef::new("apps", "v1", "StatefulSet", "statefulsets", true)
            .short_names(&["sts"])
            .categories(&["all"])
            .subresources(&[Status, Scale])
            .generation()
            .typed::<apps::v1::StatefulSet>()
            .columns(printers::statefulset())
            .defaulter(defaults::statefulset)
            .validator(validation::statefulset),
        // batch/v1
        ResourceDef::new("batch", "v1", "Job", "jobs", true)
            .categories(&["all"])
            .subresources(&[Status])
            .fields(&["status.successful"])
            .generation()
            .typed::<batch::v1::Job>()
            .columns(printers::job())
            .defaulter(defaults::job)
            .validator(validation::job),
        ResourceDef::new("batch", "v1", "CronJob", "cronjobs", true)
            .short_names(&["cj"])
            .categories(&["all"])
            .subresources(&[Status])
            .generation()
            .typed::<batch::v1::CronJob>()
            .columns(printers::cronjob())
            .defaulter(defaults::cronjob)
            .validator(validation::cronjob),
        // coordination.k8s.io/v1
        ResourceDef::new("coordination.k8s.io", "v1", "Lease", "leases", true)
            .typed::<coordination::v1::Lease>()
            .columns(printers::lease()),
        // policy/v1
        ResourceDef::new(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
        )
        .short_names(&["pdb"])
        .subresources(&[Status])
        .generation()
        .typed::<policy::v1::PodDisruptionBudget>()
        .columns(printers::poddisruptionbudget())
        .validator(validation::poddisruptionbudget),
        // scheduling.k8s.io/v1
        ResourceDef::new(
            "scheduling.k8s.io",
            "v1",
            "PriorityClass",
            "priorityclasses",
            false,
        )
        .short_names(&["pc"])
        .typed::<scheduling::v1::PriorityClass>()
        .columns(printers::priorityclass())
        .validator(validation::priorityclass),
        // events.k8s.io/v1 — the same objects as core/v1 events, in the newer form.
        ResourceDef::new("events.k8s.io", "v1", "Event", "events", true)
            .short_names(&["ev"])
            .typed::<events::v1::Event>()
            .columns(printers::event_v1())
            .shared_storage(SharedStorage {
                group: "",
                to_storage: super::defaults::event_v1_to_core,
                from_storage: super::defaults::event_core_to_v1,
            }),
        // storage.k8s.io/v1
        ResourceDef::new(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            false,
        )
        .short_names(&["sc"])
        .typed::<storage::v1::StorageClass>()
        .columns(printers::storageclass())
        .defaulter(defaults::storageclass),
        // rbac.authorization.k8s.io/v1
        ResourceDef::new(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
        )
        .path_segment_names()
        .typed::<rbac::v1::ClusterRole>()
        .columns(printers::clusterrole()),
        ResourceDef::new(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        )
        .path_segment_names()
        .typed::<rbac::v1::ClusterRoleBinding>()
        .columns(printers::clusterrolebinding()),
        ResourceDef::new("rbac.authorization.k8s.io", "v1", "Role", "roles", true)
            .path_segment_names()
            .typed::<rbac::v1::Role>()
            .columns(printers::role()),
        ResourceDef::new(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
        )
        .path_segment_names()
        .typed::<rbac::v1::RoleBinding>()
        .columns(printers::rolebinding()),
        // authentication.k8s.io/v1 and authorization.k8s.io/v1: answered, never stored.
        ResourceDef::new(
            "authentication.k8s.io",
            "v1",
            "SelfSubjectReview",
            "selfsubjectreviews",
            false,
        )
        .typed::<authentication::v1::SelfSubjectReview>()
        .virtual_create(crate::rbac::review::self_subject_review),
        ResourceDef::new(
            "authorization.k8s.io",
            "v1",
            "LocalSubjectAccessReview",
            "localsubjectaccessreviews",
            true,
        )
        .typed::<authorization::v1::LocalSubjectAccessReview>()
        .virtual_create(crate::rbac::review::local_subject_access_review),
        ResourceDef::new(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            false,
        )
        .typed::<authorization::v1::SelfSubjectAccessReview>()
        .virtual_create(crate::rbac::review::self_subject_access_review),
        ResourceDef::new(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            false,
        )
        .typed::<authorization::v1::SelfSubjectRulesReview>()
        .virtual_create(crate::rbac::review::self_subject_rules_review),
        ResourceDef::new(
            "authorization.k8s.io",
            "v1",
            "SubjectAccessReview",
            "subjectaccessreviews",
            false,
        )
        .typed::<authorization::v1::SubjectAccessReview>()
        .virtual_create(crate::rbac::review::subject_access_review),
        // apiextensions.k8s.io/v1
        ResourceDef::new(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        )
        .short_names(&["crd", "crds"])
        .categories(&["api-extensions"])
        .subresources(&[Status])
        .generation()
        .typed::<apiextensions::CustomResourceDefinition>()
        .validator(crate::crd::validate)
        .columns(printers::customresourcedefinition()),
    ]
}
