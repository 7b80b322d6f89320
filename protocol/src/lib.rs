//! The Metalbus wire contract, shared by the agent, the controller and the CLI.
//!
//! Everything here is pure: no sockets, no files, no clocks, no async. That keeps the
//! contract testable with plain data and lets any process speak it.
//!
//! [`PROTOCOL_VERSION`] numbers the contract; agents say theirs in their birth, the
//! controller its own in its status and receipts (docs/PROTOCOL.md, versions).
//!
//! - [`NodeId`]: the validated node identity (DESIGN section 2).
//! - [`topic`]: the MQTT topic builder and parser (DESIGN section 3).
//! - [`status`], [`inventory`], [`metrics`]: what agents publish.
//! - [`controller`]: what the controller publishes (state, summary, rejects).
//! - [`command`]: controller → agent commands and install plans; [`report`]: the agent's
//!   acks and job events.
//! - [`lifecycle`]: node states and phases (DESIGN section 7.1); [`machine`]: the
//!   transition table and the pure function that applies events (DESIGN section 7.2).
//! - [`api`]: HTTP API bodies, roles and error codes (DESIGN section 9); [`event`]: node
//!   events and their closed list of reasons (DESIGN section 7.5).
//! - Every name on the wire (states, phases, kinds, statuses, reasons, roles) is a
//!   `names!` enum: one list gives serde, `ALL`, `as_str`, `Display` and `FromStr`.
//! - [`proof`]: origin proof (HMAC seals, identity signatures); [`enroll`]: the
//!   enrollment token and exchange that give an agent its node key (DESIGN section 11).
//! - [`Timestamp`]: RFC 3339 UTC timestamps on the wire; [`units`]: GB, GiB, Mbit/s and
//!   the two-decimal rounding of API figures.

/// The version of the MQTT contract this build speaks. It goes up only when a message
/// changes in a way an older peer would misread; a new optional field, which every
/// peer ignores when it does not know it, leaves it as it is. A controller reads every
/// version from 1 to its own, so an older agent keeps working with a newer controller.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a peer that predates the version field speaks.
pub fn first_protocol() -> u32 {
    1
}

pub mod api;
pub mod campaign;
pub mod command;
pub mod controller;
pub mod enroll;
pub mod event;
pub mod fleet;
#[doc(hidden)]
pub mod fuzz;
pub mod inventory;
pub mod lifecycle;
pub mod machine;
pub mod metrics;
mod names;
mod node_id;
pub mod proof;
pub mod report;
pub mod status;
mod timestamp;
pub mod topic;
pub mod units;

pub use node_id::{is_valid_node_name, NodeId, NodeIdError};
pub use timestamp::{Timestamp, TimestampError};

/// Largest payload the controller accepts on any agent topic (DESIGN section 3).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Largest counter (`seq`, `conn`) accepted from the network: 2^53 - 1, the largest
/// integer every JSON reader (JavaScript's included) holds exactly. An agent counting
/// one a millisecond reaches it after 285,000 years, so a larger one is a forgery or a
/// bug, and refusing it keeps `+ 1` from overflowing anywhere.
pub const MAX_COUNTER: u64 = (1 << 53) - 1;

/// Longest agent session id accepted (agents make 32 hex digits).
pub const MAX_SESSION_BYTES: usize = 128;

/// The default MQTT topic prefix.
pub const DEFAULT_PREFIX: &str = "metalbus/v1";
