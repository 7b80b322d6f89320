//! The hardware inventory (DESIGN section 6), read from `/sys`, `/proc` and `/etc` under a
//! root directory so that fixture trees exercise the same code as a live host.
//!
//! A value that cannot be read is `None`, never 0 or a placeholder. Each section lives in
//! its own submodule: `system` (DMI), `cpu`, `disks`, `nics` (with `addresses`) and `os`;
//! memory and the hostname are small enough to live here.

mod addresses;
pub(crate) mod cpu;
pub(crate) mod disks;
pub(crate) mod nics;
mod os;
pub(crate) mod system;

use std::collections::BTreeMap;
use std::path::Path;

use metalbus_protocol::inventory::{Inventory, MemoryInfo};

use super::{identity, sysfs};

/// Reads the whole inventory of the host whose files are under `root` (normally `/`).
///
/// Never panics and never fails: whatever cannot be read is `None` or left out.
/// `node_id` is left `None` for the caller to fill.
pub fn collect(root: &Path) -> Inventory {
    Inventory {
        hostname: identity::hostname(root),
        system: system::collect(root),
        cpu: cpu::collect(root),
        memory: memory(root),
        disks: disks::collect(root),
        nics: nics::collect(root),
        os: os::collect(root),
        node_id: None,
    }
}

fn memory(root: &Path) -> MemoryInfo {
    let info = sysfs::read_text(root, "proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or_default();
    MemoryInfo {
        total_bytes: info.get("MemTotal").copied(),
        swap_bytes: info.get("SwapTotal").copied(),
    }
}

/// `/proc/meminfo` as bytes per key (`MemTotal:  16318412 kB` → `16318412 × 1024`).
/// Lines without a unit (`HugePages_Total: 0`) keep their plain count.
pub(crate) fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            let bytes = match parts.next() {
                None => value,
                Some("kB") => value.checked_mul(1024)?,
                Some(_) => return None,
            };
            Some((key.trim().to_owned(), bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_units() {
        let m = parse_meminfo(
            "MemTotal:       24684084 kB\nMemAvailable:   24434468 kB\nSwapTotal:             0 kB\n\
             HugePages_Total:       0\nBroken: x kB\nWeird:  5 MB\n",
        );
        assert_eq!(m["MemTotal"], 24_684_084 * 1024);
        assert_eq!(m["MemAvailable"], 24_434_468 * 1024);
        assert_eq!(m["SwapTotal"], 0);
        assert_eq!(m["HugePages_Total"], 0);
        assert!(!m.contains_key("Broken"));
        assert!(!m.contains_key("Weird"));
    }

    #[test]
    fn an_empty_root_gives_an_empty_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let inv = collect(dir.path());
        assert_eq!(inv, Inventory::default());
    }
}
