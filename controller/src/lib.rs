//! The Metalbus controller as a library; `main.rs` only parses flags.
//!
//! Code map (see ARCHITECTURE.md):
//! - [`serve`]: wires everything and runs the daemon.
//! - [`broker`]: the embedded rumqttd broker.
//! - [`bus`]: the controller's MQTT client (subscribe, ingest, publish).
//! - [`ingest`]: pure decoding and refusal of agent messages.
//! - [`engine`]: the one writer of node data; [`matching`]: which registration a new
//!   agent claims.
//! - [`store`]: redb tables and records.
//! - [`api`]: the HTTP API, with [`live`] behind its event stream; [`cli`]: the
//!   operator CLI.
//! - [`publish`], [`telemetry`], [`config`]: plumbing.

pub mod acl;
pub mod api;
pub mod broker;
pub mod bus;
pub mod cli;
pub mod config;
pub mod door;
pub mod engine;
#[doc(hidden)]
pub mod fuzz;
pub mod ingest;
pub mod intake;
pub mod live;
pub mod matching;
pub mod mosquitto;
pub mod publish;
pub mod reject_log;
pub mod security;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod wake;
