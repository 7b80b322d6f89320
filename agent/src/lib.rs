//! The Metalbus agent as a library: the `metalbus-agent` binary and the controller's
//! `--local-agent` both run it.
//!
//! - [`collectors`]: inventory, metrics and identity from sysfs/procfs.
//! - [`daemon`]: the MQTT run loop; [`sampler`] runs the collectors off that loop.
//! - [`simulate`]: N virtual agents in one process (real protocol code and outbox,
//!   invented hosts and jobs).
//! - [`jobs`]: the job runner (plan steps as child processes from `steps_dir`).
//! - [`link`]: broker URLs, MQTT client options and reconnect backoff (shared with the
//!   controller).
//! - [`config`]: settings; [`outbox`]: what survives restarts (conn, session, the
//!   report outbox, remembered commands, the running job); [`host`]: the machine's facts,
//!   or a simulated machine's.
//! - [`power`]: the reboot and poweroff actions, run from the agent's own config.
//! - [`logging`]: log set-up and the shutdown signal, shared by both daemons.

pub mod collectors;
pub mod config;
pub mod daemon;
pub mod host;
pub mod jobs;
pub mod link;
pub mod logging;
pub mod outbox;
pub mod power;
pub mod sampler;
pub mod simulate;
