//! The Visor host agent (`visor agent`): makes a host a node of the cluster and runs the pods
//! bound to it.
//!
//! Parts: joining and the host's credentials ([`join`]); the Node object, its heartbeat Lease
//! and capacity ([`node`]); the pod workers that drive each bound pod towards its spec and
//! report its status ([`pods`]); the [`runtime`] interface with its implementations ([`oci`]
//! for runc, [`sim`] for simulated hosts); and the agent's own HTTPS endpoint through which
//! the API server proxies logs, exec and port-forward ([`server`]).

pub mod agent;
pub mod images;
pub mod join;
pub mod node;
pub mod oci;
pub mod pods;
pub mod runtime;
pub mod server;
pub mod sim;
pub mod tls;
