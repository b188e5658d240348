//! Visor's scheduler: placement for every workload with requests, and the loop that binds
//! pods.
//!
//! - [`model`]: workloads, hosts, selectors, taints, affinity and spread, free of API types;
//! - [`cluster`]: the placement core — a cache of hosts and placements and
//!   [`Cluster::place`] / [`Cluster::preempt`]; pure, synchronous, fast at thousands of hosts;
//! - [`convert`]: Pods and Nodes into the core's forms;
//! - [`runner`]: the scheduler loop inside `visor server`, which watches pods, nodes and
//!   namespaces and binds through `pods/binding`.

pub mod cluster;
pub mod convert;
pub mod model;
pub mod quantity;
pub mod runner;

pub use cluster::{Cluster, HostUsage, Preemption, Unschedulable};
pub use model::{HostInfo, Resources, Workload};
