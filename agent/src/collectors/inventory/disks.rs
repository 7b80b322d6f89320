//! Block devices from `/sys/block`, mounted or not, except `loop*`, `ram*` and `zram*`.
//!
//! The transport is read off the device's place in the sysfs device tree
//! (`.../ata1/host0/...` is SATA, `.../usb1/...` USB, `.../end_device-...` SAS).

use std::path::Path;

use metalbus_protocol::inventory::Disk;

use crate::collectors::sysfs;

const BLOCK: &str = "sys/block";

/// The whole-disk names the inventory reports, sorted (also the set metrics sum I/O over).
/// Names are as in `/dev` and `/proc/diskstats` (`cciss!c0d0` becomes `cciss/c0d0`).
pub(crate) fn names(root: &Path) -> Vec<String> {
    entries(root).iter().map(|e| e.replace('!', "/")).collect()
}

/// The `/sys/block` entries of the reported disks.
fn entries(root: &Path) -> Vec<String> {
    sysfs::list_dir(root, BLOCK)
        .into_iter()
        .filter(|n| !["loop", "ram", "zram"].iter().any(|p| n.starts_with(p)))
        .collect()
}

/// Reads every reported disk.
pub(crate) fn collect(root: &Path) -> Vec<Disk> {
    let mut disks: Vec<Disk> = entries(root).iter().map(|e| read_disk(root, e)).collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

fn read_disk(root: &Path, entry: &str) -> Disk {
    let at = |file: &str| format!("{BLOCK}/{entry}/{file}");
    let text = |file: &str| sysfs::read_string(root, &at(file));
    let device_path = sysfs::resolve(root, &format!("{BLOCK}/{entry}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let serial = text("device/serial")
        .or_else(|| text("serial"))
        .or_else(|| sysfs::read_bytes(root, &at("device/vpd_pg80")).and_then(|b| vpd_serial(&b)));
    Disk {
        name: entry.replace('!', "/"),
        model: text("device/model"),
        serial,
        wwn: text("wwid").or_else(|| text("device/wwid")),
        size_bytes: sysfs::read_parse::<u64>(root, &at("size")).and_then(|s| s.checked_mul(512)),
        rotational: sysfs::read_flag(root, &at("queue/rotational")),
        removable: sysfs::read_flag(root, &at("removable")),
        transport: transport(&device_path, entry).map(str::to_owned),
    }
}

/// The unit serial number from a SCSI VPD page 0x80 (how SATA and SAS disks expose it).
fn vpd_serial(page: &[u8]) -> Option<String> {
    let [_, 0x80, hi, lo, rest @ ..] = page else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    let raw = rest.get(..len)?;
    let text = String::from_utf8_lossy(raw);
    let serial = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!serial.is_empty()).then(|| serial.to_owned())
}

/// The bus a disk hangs off, from its resolved sysfs path and its name; `None` when the
/// path says nothing known (device-mapper, md, nbd, ...).
pub(crate) fn transport(device_path: &str, name: &str) -> Option<&'static str> {
    let has = |part: &str| device_path.split('/').any(|c| c.starts_with(part));
    Some(if name.starts_with("nvme") || has("nvme") {
        "nvme"
    } else if name.starts_with("vd") || has("virtio") {
        "virtio"
    } else if has("usb") {
        "usb"
    } else if name.starts_with("mmcblk") || has("mmc") {
        "mmc"
    } else if has("session") {
        "iscsi"
    } else if has("end_device-") || has("sas_") {
        "sas"
    } else if has("ata") {
        "sata"
    } else if name.starts_with("xvd") || has("vbd-") {
        "xen"
    } else if has("target") || name.starts_with("sd") || name.starts_with("sr") {
        "scsi"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_transport_from_the_device_path() {
        let cases = [
            ("sys/devices/pci0000:30/0000:30:02.0/0000:31:00.0/nvme/nvme0/nvme0n1", "nvme0n1", Some("nvme")),
            ("sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1", "nvme0n1", Some("nvme")),
            ("sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda", "vda", Some("virtio")),
            ("sys/devices/pci0000:00/0000:00:04.0/virtio1/host0/target0:0:0/0:0:0:1/block/sda", "sda", Some("virtio")),
            ("sys/devices/pci0000:00/0000:00:14.0/usb1/1-14/1-14:1.0/host1/target1:0:0/1:0:0:0/block/sdb", "sdb", Some("usb")),
            ("sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda", "sda", Some("sata")),
            ("sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0/block/sda", "sda", Some("sas")),
            ("sys/devices/platform/host3/session1/target3:0:0/3:0:0:0/block/sdc", "sdc", Some("iscsi")),
            ("sys/devices/platform/fe320000.mmc/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0", "mmcblk0", Some("mmc")),
            ("sys/devices/vbd-51712/block/xvda", "xvda", Some("xen")),
            ("sys/devices/pci0000:00/0000:00:10.0/host2/target2:0:0/2:0:0:0/block/sdd", "sdd", Some("scsi")),
            ("sys/devices/virtual/block/dm-0", "dm-0", None),
            ("sys/devices/virtual/block/md0", "md0", None),
        ];
        for (path, name, want) in cases {
            assert_eq!(transport(path, name), want, "{path}");
        }
    }

    #[test]
    fn reads_vpd_page_0x80_serials() {
        let mut page = vec![0x00, 0x80, 0x00, 0x14];
        page.extend_from_slice(b"            ZDS0ABCD");
        assert_eq!(vpd_serial(&page).as_deref(), Some("ZDS0ABCD"));
        assert_eq!(vpd_serial(&[0x00, 0x83, 0x00, 0x01, b'x']), None);
        assert_eq!(vpd_serial(&[0x00, 0x80, 0x00, 0x09, b'x']), None);
        assert_eq!(vpd_serial(&[0x00, 0x80, 0x00, 0x02, b' ', 0]), None);
    }
}
