//! The `inventory` topic: a host's hardware and OS, as read from sysfs, procfs and sysinfo
//! (DESIGN section 6).
//!
//! Every leaf is an `Option`: a value that could not be read is `null`, never 0 or a
//! placeholder. Sections are always present, so a reader can tell "absent" from "unknown".

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// The whole inventory of one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Inventory {
    pub hostname: Option<String>,
    pub system: SystemInfo,
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub os: OsInfo,
    /// When present it must equal the topic's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
}

/// DMI data: `/sys/class/dmi/id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SystemInfo {
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub bios_vendor: Option<String>,
    pub bios_version: Option<String>,
    pub chassis_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CpuInfo {
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub sockets: Option<u32>,
    /// Physical cores, all sockets.
    pub cores: Option<u32>,
    /// Logical CPUs (hardware threads), all sockets.
    pub threads: Option<u32>,
    pub arch: Option<String>,
    pub mhz: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemoryInfo {
    pub total_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
}

/// One block device from `/sys/block` (loop, ram and zram excluded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Disk {
    pub name: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub size_bytes: Option<u64>,
    pub rotational: Option<bool>,
    pub removable: Option<bool>,
    /// `nvme`, `sata`, `sas`, `usb`, `virtio`, ...
    pub transport: Option<String>,
}

/// One non-virtual network interface.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Nic {
    pub name: String,
    /// Lower-case, colon-separated.
    pub mac: Option<String>,
    pub speed_mbps: Option<u64>,
    pub carrier: Option<bool>,
    pub driver: Option<String>,
    pub mtu: Option<u32>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub ipv4: Vec<Ipv4Addr>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub ipv6: Vec<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Uefi,
    Bios,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OsInfo {
    /// `ID` from os-release, e.g. `debian`.
    pub id: Option<String>,
    /// `PRETTY_NAME` (or `NAME`) from os-release.
    pub name: Option<String>,
    /// `VERSION_ID` from os-release.
    pub version: Option<String>,
    pub kernel: Option<String>,
    pub boot_mode: Option<BootMode>,
}

/// Why an inventory was refused beyond plain type errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("inventory lists {count} {what}; at most {max} are accepted")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
}

impl Inventory {
    /// Most disks or NICs one host may report.
    pub const MAX_DEVICES: usize = 4096;

    /// Checks limits that the type system cannot express.
    pub fn validate(&self) -> Result<(), InventoryError> {
        for (what, count) in [("disks", self.disks.len()), ("nics", self.nics.len())] {
            if count > Self::MAX_DEVICES {
                return Err(InventoryError::TooMany {
                    what,
                    count,
                    max: Self::MAX_DEVICES,
                });
            }
        }
        Ok(())
    }

    /// Sum of all disk sizes that are known.
    pub fn storage_bytes(&self) -> Option<u64> {
        let mut sizes = self.disks.iter().filter_map(|d| d.size_bytes).peekable();
        sizes.peek()?;
        // Saturating: the values come from the network.
        Some(sizes.fold(0u64, u64::saturating_add))
    }

    /// Every known MAC address, in NIC order.
    pub fn mac_addresses(&self) -> Vec<String> {
        self.nics.iter().filter_map(|n| n.mac.clone()).collect()
    }

    /// Every IP address (v4 first), in NIC order.
    pub fn ip_addresses(&self) -> Vec<String> {
        let v4 = self
            .nics
            .iter()
            .flat_map(|n| n.ipv4.iter().map(|a| a.to_string()));
        let v6 = self
            .nics
            .iter()
            .flat_map(|n| n.ipv6.iter().map(|a| a.to_string()));
        v4.chain(v6).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_values_stay_null_on_the_wire() {
        let inv = Inventory::default();
        let v = serde_json::to_value(&inv).unwrap();
        assert_eq!(v["cpu"]["threads"], serde_json::Value::Null);
        assert_eq!(v["memory"]["total_bytes"], serde_json::Value::Null);
        assert_eq!(v["hostname"], serde_json::Value::Null);
        assert!(v.get("node_id").is_none());
    }

    #[test]
    fn parses_a_full_inventory_and_derives_totals() {
        let json = r#"{
          "hostname":"r1u7",
          "system":{"vendor":"Dell Inc.","product":"PowerEdge R650","serial":"ABC","uuid":"4c4c","bios_vendor":"Dell","bios_version":"1.2","chassis_type":"23"},
          "cpu":{"model":"Xeon","vendor":"GenuineIntel","sockets":2,"cores":48,"threads":96,"arch":"x86_64","mhz":2100.0},
          "memory":{"total_bytes":274877906944,"swap_bytes":0},
          "disks":[{"name":"nvme0n1","model":"PM9A3","serial":"S1","wwn":null,"size_bytes":1920383410176,"rotational":false,"removable":false,"transport":"nvme"},
                   {"name":"sda","model":null,"serial":null,"wwn":null,"size_bytes":null,"rotational":true,"removable":false,"transport":"sata"}],
          "nics":[{"name":"eno1","mac":"aa:bb:cc:dd:ee:ff","speed_mbps":25000,"carrier":true,"driver":"mlx5_core","mtu":9000,"ipv4":["10.0.0.7"],"ipv6":["fe80::1"]}],
          "os":{"id":"debian","name":"Debian GNU/Linux 12 (bookworm)","version":"12","kernel":"6.1.0","boot_mode":"uefi"},
          "extra":"ignored"
        }"#;
        let inv: Inventory = serde_json::from_str(json).unwrap();
        inv.validate().unwrap();
        assert_eq!(inv.cpu.threads, Some(96));
        assert_eq!(inv.storage_bytes(), Some(1_920_383_410_176));
        assert_eq!(inv.mac_addresses(), vec!["aa:bb:cc:dd:ee:ff"]);
        assert_eq!(inv.ip_addresses(), vec!["10.0.0.7", "fe80::1"]);
        assert_eq!(inv.os.boot_mode, Some(BootMode::Uefi));
    }

    #[test]
    fn refuses_wrong_types() {
        for bad in [
            r#"{"hostname":1,"system":{},"cpu":{},"memory":{},"disks":[],"nics":[],"os":{}}"#,
            r#"{"system":{},"cpu":{"threads":"many"},"memory":{},"disks":[],"nics":[],"os":{}}"#,
            r#"{"system":{},"cpu":{},"memory":{"total_bytes":-5},"disks":[],"nics":[],"os":{}}"#,
            r#"{"system":{},"cpu":{},"memory":{},"disks":{},"nics":[],"os":{}}"#,
            r#"{"system":{},"cpu":{},"memory":{},"disks":[],"nics":[{"name":"e","ipv4":["300.1.1.1"]}],"os":{}}"#,
            r#"{"cpu":{},"memory":{},"disks":[],"nics":[],"os":{}}"#,
            r#""inventory""#,
        ] {
            assert!(serde_json::from_str::<Inventory>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn totals_of_huge_values_saturate_instead_of_overflowing() {
        let disk = Disk {
            name: "d".into(),
            model: None,
            serial: None,
            wwn: None,
            size_bytes: Some(u64::MAX),
            rotational: None,
            removable: None,
            transport: None,
        };
        let inv = Inventory {
            disks: vec![disk.clone(), disk],
            ..Inventory::default()
        };
        assert_eq!(inv.storage_bytes(), Some(u64::MAX));
    }

    #[test]
    fn refuses_absurd_device_counts() {
        let nic = Nic {
            name: "e".into(),
            ..Nic::default()
        };
        let inv = Inventory {
            nics: vec![nic; Inventory::MAX_DEVICES + 1],
            ..Inventory::default()
        };
        assert!(matches!(
            inv.validate(),
            Err(InventoryError::TooMany { what: "nics", .. })
        ));
    }
}
