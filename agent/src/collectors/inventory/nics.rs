//! Physical network interfaces from `/sys/class/net`.
//!
//! An interface is physical when its sysfs entry resolves outside `devices/virtual/`:
//! that drops `lo`, bridges, bonds, veths, tunnels and `ifb`s, whatever their names.

use std::path::Path;

use metalbus_protocol::inventory::Nic;

use super::addresses;
use crate::collectors::sysfs;

const NET: &str = "sys/class/net";

/// The names of the physical interfaces, sorted.
pub(crate) fn physical_names(root: &Path) -> Vec<String> {
    sysfs::list_dir(root, NET)
        .into_iter()
        .filter(|name| {
            sysfs::resolve(root, &format!("{NET}/{name}"))
                .is_some_and(|p| !p.starts_with("sys/devices/virtual"))
        })
        .collect()
}

/// The MAC of an interface, lower-case; `None` when unreadable or all zeros.
fn mac(root: &Path, name: &str) -> Option<String> {
    let mac = sysfs::read_string(root, &format!("{NET}/{name}/address"))?.to_ascii_lowercase();
    mac.chars()
        .any(|c| c.is_ascii_hexdigit() && c != '0')
        .then_some(mac)
}

/// The burned-in MACs (`addr_assign_type` 0) of the physical interfaces, lower-case, sorted.
pub(crate) fn permanent_macs(root: &Path) -> Vec<String> {
    let mut macs: Vec<String> = physical_names(root)
        .into_iter()
        .filter(|name| {
            sysfs::read_parse::<u8>(root, &format!("{NET}/{name}/addr_assign_type")) == Some(0)
        })
        .filter_map(|name| mac(root, &name))
        .collect();
    macs.sort();
    macs
}

/// Reads every physical interface, with its addresses.
pub(crate) fn collect(root: &Path) -> Vec<Nic> {
    let mut ipv4 = match (
        sysfs::read_text(root, "proc/net/fib_trie"),
        sysfs::read_text(root, "proc/net/route"),
    ) {
        (Some(trie), Some(route)) => addresses::ipv4_by_interface(&trie, &route),
        _ => Default::default(),
    };
    let mut ipv6 = sysfs::read_text(root, "proc/net/if_inet6")
        .map(|t| addresses::ipv6_by_interface(&t))
        .unwrap_or_default();
    physical_names(root)
        .into_iter()
        .map(|name| {
            let at = |file: &str| format!("{NET}/{name}/{file}");
            Nic {
                mac: mac(root, &name),
                // The kernel prints -1 for an unknown speed and refuses the read (EINVAL)
                // while the link is down; 0 is no speed either.
                speed_mbps: sysfs::read_parse::<i64>(root, &at("speed"))
                    .and_then(|s| u64::try_from(s).ok())
                    .filter(|s| *s > 0),
                carrier: sysfs::read_flag(root, &at("carrier")),
                driver: sysfs::link_name(root, &at("device/driver")),
                mtu: sysfs::read_parse(root, &at("mtu")),
                ipv4: ipv4.remove(&name).unwrap_or_default(),
                ipv6: ipv6.remove(&name).unwrap_or_default(),
                name,
            }
        })
        .collect()
}
