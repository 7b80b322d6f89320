//! Who this host is: its node id (DESIGN section 2), hostname and boot id.
//!
//! The node id is the first usable of: the configured id; DMI `product_uuid` lower-cased
//! (junk values skipped); `/etc/machine-id`; the lowest burned-in MAC of a physical NIC
//! without `:`. Each candidate must pass [`NodeId::new`]. A configured id that fails is an
//! error (an operator typo must not silently become another identity); a discovered one
//! that fails is skipped.

use std::path::Path;

use metalbus_protocol::{NodeId, NodeIdError};

use super::inventory::{nics, system};
use super::sysfs;

/// Why no node id could be settled on.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("configured node_id {value:?} is not a valid node id: {source}")]
    InvalidConfigured {
        value: String,
        #[source]
        source: NodeIdError,
    },
    #[error(
        "no node id found under {root}: no usable DMI product_uuid, /etc/machine-id \
         or permanent MAC of a physical NIC; set node_id in the config"
    )]
    NotFound { root: String },
}

/// Settles the node id: `configured` if given, else the first usable id found under `root`.
pub fn node_id(configured: Option<&str>, root: &Path) -> Result<NodeId, IdentityError> {
    if let Some(value) = configured {
        return NodeId::new(value).map_err(|source| IdentityError::InvalidConfigured {
            value: value.to_owned(),
            source,
        });
    }
    let discovered = [
        system::product_uuid(root),
        machine_id(root),
        nics::permanent_macs(root)
            .first()
            .map(|mac| mac.replace(':', "")),
    ];
    discovered
        .into_iter()
        .flatten()
        .find_map(|candidate| NodeId::new(candidate).ok())
        .ok_or_else(|| IdentityError::NotFound {
            root: root.display().to_string(),
        })
}

/// `/etc/machine-id` when it holds a real id: 32 lower-case hex digits, not all zero.
/// (systemd writes `uninitialized` there during first boot.)
fn machine_id(root: &Path) -> Option<String> {
    let id = sysfs::read_string(root, "etc/machine-id")?;
    let hex = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && id.bytes().any(|b| b != b'0')).then_some(id)
}

/// The kernel's hostname (`/proc/sys/kernel/hostname`); `None` if unset (`(none)`).
pub fn hostname(root: &Path) -> Option<String> {
    sysfs::read_string(root, "proc/sys/kernel/hostname").filter(|h| h != "(none)")
}

/// This boot's random id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id(root: &Path) -> Option<String> {
    sysfs::read_string(root, "proc/sys/kernel/random/boot_id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn machine_id_must_be_real() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        for (content, want) in [
            (
                "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
                Some("3d1219c7c4c5404aaa1f6d2a48adfda4"),
            ),
            ("uninitialized\n", None),
            ("00000000000000000000000000000000\n", None),
            ("3D1219C7C4C5404AAA1F6D2A48ADFDA4\n", None),
            ("", None),
        ] {
            fs::write(r.join("etc/machine-id"), content).unwrap();
            assert_eq!(machine_id(r).as_deref(), want, "{content:?}");
        }
    }

    #[test]
    fn hostname_none_is_unset() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        assert_eq!(hostname(r), None);
        fs::create_dir_all(r.join("proc/sys/kernel")).unwrap();
        fs::write(r.join("proc/sys/kernel/hostname"), "(none)\n").unwrap();
        assert_eq!(hostname(r), None);
        fs::write(r.join("proc/sys/kernel/hostname"), "r1u7\n").unwrap();
        assert_eq!(hostname(r).as_deref(), Some("r1u7"));
    }

    #[test]
    fn nothing_found_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = node_id(None, dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::NotFound { .. }), "{err}");
        assert_eq!(node_id(Some("n1"), dir.path()).unwrap().as_str(), "n1");
    }
}
