//! Filesystem usage: sysinfo's `Disks` lists the mounts, a `statvfs` of each counts the
//! space the way `df` does. The one metric no file under the root can answer.
//!
//! Only used when the root is `/`. sysinfo already skips pseudo filesystems (proc, sysfs,
//! tmpfs, squashfs, cgroup, ...); on top of that, mounts with no size and a few more
//! pseudo types are skipped, and a block device mounted more than once (bind mounts, btrfs
//! subvolumes) is reported once, at its shortest mount point.

use std::collections::BTreeMap;

use metalbus_protocol::metrics::Filesystem;
use sysinfo::{DiskRefreshKind, Disks};

/// Filesystem types that never hold user data, beyond those sysinfo already skips.
const PSEUDO: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "configfs",
    "debugfs",
    "efivarfs",
    "fusectl",
    "nsfs",
    "ramfs",
    "securityfs",
    "tracefs",
    "fuse.lxcfs",
    "fuse.portal",
    "fuse.gvfsd-fuse",
];

/// (total, used, available) bytes from `statvfs`, counted like `df`: used = total − free,
/// and available excludes the blocks reserved for root.
fn usage(mount: &std::path::Path) -> Option<(u64, u64, u64)> {
    let st = rustix::fs::statvfs(mount).ok()?;
    let unit = st.f_frsize.max(1);
    let total = st.f_blocks.checked_mul(unit)?;
    let free = st.f_bfree.checked_mul(unit)?.min(total);
    let available = st.f_bavail.checked_mul(unit)?.min(total);
    Some((total, total - free, available))
}

/// The host's mounted filesystems, refreshed on each reading.
#[derive(Debug)]
pub(crate) struct Filesystems {
    disks: Disks,
}

fn refresh_kind() -> DiskRefreshKind {
    DiskRefreshKind::nothing().with_storage()
}

impl Filesystems {
    /// Lists the mounts; `None` if sysinfo cannot (it reads `/proc/mounts`).
    pub(crate) fn new() -> Option<Self> {
        match Disks::new_with_refreshed_list_specifics(refresh_kind()) {
            Ok(disks) => Some(Self { disks }),
            Err(err) => {
                tracing::warn!(%err, "cannot list filesystems; filesystem usage will be null");
                None
            }
        }
    }

    /// Usage of every data-bearing filesystem, sorted by mount point.
    pub(crate) fn read(&mut self) -> Vec<Filesystem> {
        self.disks.refresh_specifics(true, refresh_kind());
        // Keyed by device for block devices (to fold repeated mounts), else by mount point.
        let mut by_key: BTreeMap<String, Filesystem> = BTreeMap::new();
        for disk in self.disks.iter() {
            let total = disk.total_space();
            let fs_type = disk.file_system().to_string_lossy().into_owned();
            if total == 0 || PSEUDO.contains(&fs_type.as_str()) {
                continue;
            }
            let device = disk.name().to_string_lossy().into_owned();
            let mount = disk.mount_point().to_string_lossy().into_owned();
            let key = if device.starts_with("/dev/") {
                device
            } else {
                format!("mount:{mount}")
            };
            let fs = match usage(disk.mount_point()) {
                Some((total, used, available)) => Filesystem {
                    mount,
                    fs_type: (!fs_type.is_empty()).then_some(fs_type),
                    used_bytes: used,
                    total_bytes: total,
                    available_bytes: Some(available),
                },
                None => Filesystem {
                    mount,
                    fs_type: (!fs_type.is_empty()).then_some(fs_type),
                    used_bytes: total.saturating_sub(disk.available_space()),
                    total_bytes: total,
                    available_bytes: None,
                },
            };
            let keep_old = by_key
                .get(&key)
                .is_some_and(|old| old.mount.len() <= fs.mount.len());
            if !keep_old {
                by_key.insert(key, fs);
            }
        }
        let mut out: Vec<Filesystem> = by_key.into_values().collect();
        out.sort_by(|a, b| a.mount.cmp(&b.mount));
        out
    }
}
