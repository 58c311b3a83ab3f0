//! Consensus plumbing for keel on openraft.
//!
//! - [`types`]: the openraft type configuration (commands travel as opaque bytes, several to
//!   a log entry once [`entry_format`] says every member reads that).
//! - [`machine`]: adapts the domain's deterministic state machine to the storage crate and
//!   makes retried requests apply once.
//! - [`network`] and [`service`]: peer RPCs over HTTP with bincode bodies and a cluster secret.
//! - [`append_stream`]: replication as a pipelined stream over one upgraded connection.
//! - [`forward_stream`]: a follower's requests to the leader, multiplexed on one upgraded
//!   connection; [`frames`] is what both streams speak.
//! - [`leadership`]: who leads, as each node tells it in its log and metrics.
//! - [`node`]: a node's lifecycle, membership changes, and forwarding of writes and
//!   linearizable reads to the leader.
//!
//! The crate knows nothing of the REST API or of what commands mean.

pub mod append_stream;
pub mod entry_format;
mod error;
pub mod forward_stream;
mod frames;
mod leadership;
pub mod machine;
pub mod network;
pub mod node;
pub mod service;
pub mod types;

pub use error::Error;
pub use machine::StateMachine;
pub use node::Consistency;
pub use node::RaftConfig;
pub use node::RaftNode;
pub use types::KeelNode;
pub use types::NodeId;
