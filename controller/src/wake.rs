//! Wake-on-LAN: the magic packet (6 × `0xFF`, then the MAC 16 times, 102 bytes) and
//! sending it over UDP to the one configured address (`[wake] broadcast`).
//!
//! The engine records a wake and hands a [`WakeRequest`] to the wake task ([`run`]); the
//! task sends the packets and reports the outcome back to the engine, which records it.
//!
//! A node is woken at every MAC of its stored inventory (the agent lists only NICs
//! that are not virtual), one packet each: which NIC has wake-on-LAN enabled is not
//! something the inventory can tell (docs/DECISIONS.md §49).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use metalbus_protocol::command::CommandId;
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::NodeId;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use crate::engine::Input;

/// Bytes in a magic packet.
pub const PACKET_LEN: usize = 6 + 16 * 6;
/// Most MACs one wake sends to.
pub const MAX_MACS: usize = 16;

/// A MAC that cannot be woken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("{0:?} is not a MAC address (six hex pairs separated by ':' or '-')")]
    Malformed(String),
    #[error("{0} is all zeros or broadcast, not a NIC's address")]
    NotANic(String),
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`), either case.
pub fn parse_mac(s: &str) -> Result<[u8; 6], MacError> {
    let bad = || MacError::Malformed(s.to_string());
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        // from_str_radix alone would take "+e".
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if mac == [0; 6] || mac == [0xff; 6] {
        return Err(MacError::NotANic(s.to_string()));
    }
    Ok(mac)
}

/// The magic packet for `mac`.
pub fn magic_packet(mac: [u8; 6]) -> [u8; PACKET_LEN] {
    let mut p = [0xffu8; PACKET_LEN];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac);
    }
    p
}

/// The MACs a wake of this node goes to: every usable MAC of its inventory, in NIC
/// order, without repeats, at most [`MAX_MACS`].
pub fn macs_of(inv: &Inventory) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for mac in inv.mac_addresses() {
        let mac = mac.to_ascii_lowercase();
        if parse_mac(&mac).is_ok() && !out.contains(&mac) && out.len() < MAX_MACS {
            out.push(mac);
        }
    }
    out
}

/// Sends one magic packet per MAC to `target` (broadcast allowed). The error names
/// what failed; packets for MACs before it went out.
pub async fn send(target: SocketAddr, macs: &[String]) -> Result<(), String> {
    let local = match target {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    socket
        .set_broadcast(true)
        .map_err(|e| format!("cannot enable broadcast on the UDP socket: {e}"))?;
    for mac in macs {
        let bytes = parse_mac(mac).map_err(|e| e.to_string())?;
        let sent = socket
            .send_to(&magic_packet(bytes), target)
            .await
            .map_err(|e| format!("sending the wake packet for {mac} to {target} failed: {e}"))?;
        if sent != PACKET_LEN {
            return Err(format!(
                "only {sent} of {PACKET_LEN} bytes of the wake packet for {mac} went to {target}"
            ));
        }
    }
    Ok(())
}

/// A wake the engine recorded (`queued`): send its packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeRequest {
    pub operation_id: CommandId,
    pub node_id: NodeId,
    pub macs: Vec<String>,
}

/// The wake task: sends each request's packets to `target` and tells the engine the
/// outcome. It holds the engine's sender only weakly, so it never keeps the engine
/// running at shutdown; it ends when the engine drops the request queue.
pub async fn run(
    target: SocketAddr,
    mut requests: mpsc::UnboundedReceiver<WakeRequest>,
    engine: mpsc::WeakSender<Input>,
) {
    while let Some(req) = requests.recv().await {
        let error = send(target, &req.macs).await.err();
        let Some(engine) = engine.upgrade() else {
            debug!(operation = %req.operation_id, "the engine is gone; wake outcome dropped");
            return;
        };
        let _ = engine
            .send(Input::WakeSent {
                operation_id: req.operation_id,
                error,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_magic_packet_is_six_ff_then_the_mac_sixteen_times() {
        let mac = parse_mac("52:54:00:AB:cd:0e").unwrap();
        assert_eq!(mac, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0e]);
        let p = magic_packet(mac);
        assert_eq!(p.len(), 102);
        let mut want = vec![0xffu8; 6];
        for _ in 0..16 {
            want.extend_from_slice(&[0x52, 0x54, 0x00, 0xab, 0xcd, 0x0e]);
        }
        assert_eq!(p.to_vec(), want);
        assert_eq!(parse_mac("52-54-00-ab-cd-0e").unwrap(), mac);
    }

    #[test]
    fn bad_macs_are_refused() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0e:ff",
            "52:54:00:ab:cd:zz",
            "525:4:00:ab:cd:0e",
            "52:54:00:ab:cd:+e",
            "5254.00ab.cd0e",
        ] {
            assert_eq!(
                parse_mac(bad),
                Err(MacError::Malformed(bad.to_string())),
                "{bad:?}"
            );
        }
        for not_a_nic in ["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"] {
            assert!(matches!(parse_mac(not_a_nic), Err(MacError::NotANic(_))));
        }
    }

    #[test]
    fn macs_of_an_inventory_skip_missing_zero_and_repeated_ones() {
        let inv: Inventory = serde_json::from_value(serde_json::json!({
            "hostname": "h", "system": {}, "cpu": {}, "memory": {}, "disks": [], "os": {},
            "nics": [
                {"name": "eno1", "mac": "B0:7B:25:AA:BB:CC"},
                {"name": "eno2", "mac": null},
                {"name": "ib0", "mac": "00:00:00:00:00:00"},
                {"name": "bond", "mac": "b0:7b:25:aa:bb:cc"},
                {"name": "eno3", "mac": "b0:7b:25:aa:bb:cd"}
            ]
        }))
        .unwrap();
        assert_eq!(macs_of(&inv), ["b0:7b:25:aa:bb:cc", "b0:7b:25:aa:bb:cd"]);
    }

    #[tokio::test]
    async fn packets_reach_the_configured_address_only() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let target = rx.local_addr().unwrap();
        let macs = vec!["52:54:00:12:34:56".to_string(), "52:54:00:12:34:57".into()];
        send(target, &macs).await.unwrap();
        for mac in &macs {
            let mut buf = [0u8; 200];
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(
                buf[..n].to_vec(),
                magic_packet(parse_mac(mac).unwrap()).to_vec()
            );
        }
        let err = send(target, &["nope".into()]).await.unwrap_err();
        assert!(err.contains("not a MAC address"), "{err}");
    }
}
