//! The Metalbus agent as a library: the `metalbus-agent` binary and the controller's
//! `--local-agent` both run it.
//!
//! - [`collectors`]: inventory, metrics and identity from sysfs/procfs.
//! - [`core`]: the agent's decisions without I/O (commands, acks, the outbox, power
//!   actions, `reboot_after`), unit-tested with a fake clock, publisher and job runner.
//! - [`daemon`]: the I/O around the core: one MQTT loop over a closed `Event` enum;
//!   [`sampler`] runs the collectors off that loop.
//! - [`simulate`]: N virtual agents in one process (real protocol code and outbox,
//!   invented hosts and jobs).
//! - [`jobs`]: the job runner (plan steps as child processes from `steps_dir`).
//! - [`config`]: settings; [`outbox`]: what survives restarts (conn, session, the
//!   report outbox, remembered commands, the running job); [`host`]: the machine's facts,
//!   or a simulated machine's.
//! - [`credential`]: the node key and controller identity from enrollment, kept in
//!   the state dir; a node without one enrolls first ([`daemon::Prepared`]).
//! - [`power`]: the reboot and poweroff actions, run from the agent's own config.

pub mod collectors;
pub mod config;
pub mod core;
pub mod credential;
pub mod daemon;
#[doc(hidden)]
pub mod fuzz;
pub mod host;
pub mod jobs;
pub mod outbox;
pub mod power;
pub mod sampler;
pub mod simulate;
