//! Interface IP addresses from procfs, without netlink.
//!
//! - IPv4: `/proc/net/fib_trie` lists the host's own addresses as `/32 host LOCAL` leaves
//!   but not their interface; `/proc/net/route` maps each to the interface of the most
//!   specific directly connected route (no gateway, mask not 0) that contains it.
//!   An address no connected route covers (e.g. a `/32` with only an on-link default)
//!   cannot be placed and is left out.
//! - IPv6: `/proc/net/if_inet6` names the interface of every address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// `RTF_GATEWAY` in `/proc/net/route` flags.
const RTF_GATEWAY: u32 = 0x2;
/// `IFA_F_DADFAILED` in `/proc/net/if_inet6` flags: the address is not in use.
const IFA_F_DADFAILED: u32 = 0x08;

/// Addresses per interface name, each list sorted and without duplicates.
pub(crate) type ByInterface<A> = BTreeMap<String, Vec<A>>;

/// The `/32 host LOCAL` addresses of `/proc/net/fib_trie` (both tables; duplicates merged).
pub(crate) fn local_ipv4(fib_trie: &str) -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let t = line.trim_start();
        if let Some(addr) = t.strip_prefix("|-- ") {
            leaf = addr.trim().parse().ok();
        } else if t.starts_with("+-- ") || !t.starts_with('/') {
            leaf = None;
        } else if t.split_whitespace().eq(["/32", "host", "LOCAL"]) {
            out.extend(leaf);
        }
    }
    out
}

/// One `/proc/net/route` row: a directly connected IPv4 network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectedRoute {
    pub iface: String,
    pub network: Ipv4Addr,
    pub prefix_len: u32,
}

/// Reads a hex field of `/proc/net/route`: the kernel prints the big-endian address as a
/// native-endian integer, so the native byte order gives the octets back.
fn route_addr(field: &str) -> Option<Ipv4Addr> {
    let raw = u32::from_str_radix(field, 16).ok()?;
    Some(Ipv4Addr::from(raw.to_ne_bytes()))
}

/// The connected (no gateway, non-default) routes of `/proc/net/route`.
pub(crate) fn connected_routes(route: &str) -> Vec<ConnectedRoute> {
    route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, flags, mask) = (f.first()?, f.get(1)?, f.get(3)?, f.get(7)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let mask = route_addr(mask)?;
            let prefix_len = u32::from(mask).leading_ones();
            // A mask must be contiguous ones; anything else is not a route we understand.
            if *iface == "*"
                || flags & RTF_GATEWAY != 0
                || prefix_len == 0
                || u32::from(mask).count_ones() != prefix_len
            {
                return None;
            }
            Some(ConnectedRoute {
                iface: (*iface).to_owned(),
                network: route_addr(dest)?,
                prefix_len,
            })
        })
        .collect()
}

fn contains(route: &ConnectedRoute, addr: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - route.prefix_len).unwrap_or(0);
    u32::from(addr) & mask == u32::from(route.network) & mask
}

/// Each local IPv4 address placed on the interface of its most specific connected route.
pub(crate) fn ipv4_by_interface(fib_trie: &str, route: &str) -> ByInterface<Ipv4Addr> {
    let routes = connected_routes(route);
    let mut out: ByInterface<Ipv4Addr> = BTreeMap::new();
    for addr in local_ipv4(fib_trie) {
        if addr.is_loopback() {
            continue;
        }
        let best = routes
            .iter()
            .filter(|r| contains(r, addr))
            .max_by_key(|r| r.prefix_len);
        if let Some(r) = best {
            out.entry(r.iface.clone()).or_default().push(addr);
        }
    }
    out
}

/// `/proc/net/if_inet6`: `address ifindex prefix_len scope flags name`, all hex.
pub(crate) fn ipv6_by_interface(if_inet6: &str) -> ByInterface<Ipv6Addr> {
    let mut out: BTreeMap<String, BTreeSet<Ipv6Addr>> = BTreeMap::new();
    for line in if_inet6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, _index, _prefix, _scope, flags, name] = f.as_slice() else {
            continue;
        };
        let (Ok(addr), Ok(flags)) = (
            u128::from_str_radix(addr, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        if flags & IFA_F_DADFAILED != 0 {
            continue;
        }
        out.entry((*name).to_owned())
            .or_default()
            .insert(Ipv6Addr::from(addr));
    }
    out.into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a Linux 6.x network namespace: two addresses on eno12399np0 and one on
    // docker0, loopback, and a default route via 10.20.30.1.
    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 0.0.0.0/4 2 0 2
        |-- 0.0.0.0
           /0 universe UNICAST
        +-- 10.20.30.0/24 2 1 2
           +-- 10.20.30.0/26 2 0 2
              |-- 10.20.30.0
                 /24 link UNICAST
              +-- 10.20.30.40/30 2 0 2
                 |-- 10.20.30.41
                    /32 host LOCAL
                 |-- 10.20.30.42
                    /32 host LOCAL
           |-- 10.20.30.255
              /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 172.17.0.0/16 2 0 2
        +-- 172.17.0.0/31 1 0 0
           |-- 172.17.0.0
              /16 link UNICAST
           |-- 172.17.0.1
              /32 host LOCAL
        |-- 172.17.255.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.20.30.40/30 2 0 2
        |-- 10.20.30.41
           /32 host LOCAL
";

    const ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT                                                       
eno12399np0\t00000000\t011E140A\t0003\t0\t0\t0\t00000000\t0\t0\t0                                                                        
eno12399np0\t001E140A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0                                                                        
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0                                                                            
";

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn finds_local_addresses_in_fib_trie() {
        let local: Vec<Ipv4Addr> = local_ipv4(FIB_TRIE).into_iter().collect();
        assert_eq!(
            local,
            [
                v4("10.20.30.41"),
                v4("10.20.30.42"),
                v4("127.0.0.1"),
                v4("172.17.0.1")
            ]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn reads_connected_routes() {
        let routes = connected_routes(ROUTE);
        assert_eq!(
            routes,
            [
                ConnectedRoute {
                    iface: "eno12399np0".into(),
                    network: v4("10.20.30.0"),
                    prefix_len: 24
                },
                ConnectedRoute {
                    iface: "docker0".into(),
                    network: v4("172.17.0.0"),
                    prefix_len: 16
                },
            ]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn maps_addresses_to_interfaces_by_longest_prefix() {
        let more =
            format!("{ROUTE}eno12409np1\t291E140A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n");
        let by = ipv4_by_interface(FIB_TRIE, &more);
        assert_eq!(by["eno12399np0"], [v4("10.20.30.42")]);
        assert_eq!(by["eno12409np1"], [v4("10.20.30.41")]);
        assert_eq!(by["docker0"], [v4("172.17.0.1")]);
        assert_eq!(by.len(), 3, "loopback is never placed: {by:?}");
        let plain = ipv4_by_interface(FIB_TRIE, ROUTE);
        assert_eq!(plain["eno12399np0"], [v4("10.20.30.41"), v4("10.20.30.42")]);
        assert!(ipv4_by_interface(FIB_TRIE, "").is_empty());
    }

    #[test]
    fn parses_if_inet6() {
        let text = "00000000000000000000000000000001 01 80 10 80       lo
20010db8002000300000000000000041 02 40 00 82 eno12399np0
fe80000000000000b27b25fffed4e5f0 02 40 20 82 eno12399np0
20010db8002000300000000000000099 02 40 00 08 eno12399np0
zz 02 40 20 80 eth0
";
        let by = ipv6_by_interface(text);
        let want: Vec<Ipv6Addr> = vec![
            "2001:db8:20:30::41".parse().unwrap(),
            "fe80::b27b:25ff:fed4:e5f0".parse().unwrap(),
        ];
        assert_eq!(by["eno12399np0"], want);
        assert_eq!(by["lo"], [Ipv6Addr::LOCALHOST]);
        assert!(!by.contains_key("eth0"));
    }
}
