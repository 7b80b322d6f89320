//! The agent's hardware collectors: inventory, metrics and identity, read from `/sys`,
//! `/proc` and `/etc` under a root directory (normally `/`).
//!
//! Architecture Invariant: every collector takes the root as a parameter and reads only
//! below it (symlinks included, see the private `sysfs` module), so tests run the real code on fixture
//! trees. sysinfo is used only where no file under the root can answer (filesystem usage),
//! and only when the root is `/`.
//!
//! Architecture Invariant: a value that cannot be read is `None`, never 0 or a
//! placeholder (DESIGN section 6).

pub mod identity;
pub mod inventory;
pub mod metrics;
mod sysfs;
