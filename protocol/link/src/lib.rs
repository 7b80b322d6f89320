//! What both Metalbus daemons need to reach a broker and to run as a daemon, and nothing
//! else: broker URLs, the TLS endpoint (rustls with ring), rumqttc options, the reconnect
//! backoff and the agents' reconnect policy, the clock (a fake one for tests), logging
//! and the shutdown signal, human durations, the agent's side of enrollment, and the
//! systemd watchdog fed by a loop's progress.
//!
//! The controller and the agent both depend on this crate; the controller depends on
//! the agent crate only for `--local-agent` (its `local-agent` feature).

mod backoff;
mod clock;
pub mod duration;
mod endpoint;
pub mod enroll;
pub mod files;
mod logging;
mod pinned;
mod url;
pub mod watchdog;

pub use backoff::{Backoff, Reconnect};
pub use clock::{Clock, FakeClock, SystemClock};
pub use endpoint::{
    disconnect, install_crypto_provider, set_connack_wait, Endpoint, TlsError, MAX_PACKET_BYTES,
};
pub use logging::{abort_on_panic, init_logging, shutdown_signal, LogFormat};
pub use url::{BrokerUrl, BrokerUrlError};

/// The MQTT user name of a client that is enrolling, before the `.<token id>` suffix.
pub const ENROLL_USER: &str = "metalbus-enroll";
