//! Visor's own resource kinds, as Rust types.
//!
//! Each kind derives its CustomResourceDefinition (the OpenAPI schema comes from the type
//! through schemars). `visor server` installs [`crds`] at start, so the kinds are served like
//! any custom resource — discovery, validation, printer columns, watch — while the
//! controllers, the scheduler and the agents use these same types as typed clients.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

pub mod namespace;
pub mod zone;

/// The API group of Visor's own kinds.
pub const GROUP: &str = "visor.dev";

/// The annotation on a Namespace listing, comma-separated, the zones its workloads may be
/// placed in. Absent means any zone.
pub const ALLOWED_ZONES_ANNOTATION: &str = "visor.dev/allowed-zones";

/// Every kind Visor defines, as the CRDs the server installs.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut all = Vec::new();
    all.extend(zone::crds());
    all.extend(namespace::crds());
    all
}
