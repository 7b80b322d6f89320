//! Every inventory field of both fixtures, including those that must be `None`.

use std::fs;

use metalbus_agent::collectors::inventory;
use metalbus_protocol::inventory::{BootMode, CpuInfo, Disk, MemoryInfo, Nic, OsInfo, SystemInfo};

use super::{copy_fixture, fixture, v4, v6};

#[test]
fn virtio_vm_inventory_field_by_field() {
    let inv = inventory::collect(&fixture("virtio-vm"));
    assert_eq!(inv.hostname.as_deref(), Some("vm"));
    // A Firecracker VM has no DMI at all: every field unknown, none invented.
    assert_eq!(inv.system, SystemInfo::default());
    assert_eq!(
        inv.cpu,
        CpuInfo {
            model: Some("Intel(R) Xeon(R) Processor".into()),
            vendor: Some("GenuineIntel".into()),
            sockets: Some(1),
            cores: Some(2),
            threads: Some(2),
            arch: Some("x86_64".into()),
            // No cpufreq in the VM: cpuinfo's "cpu MHz".
            mhz: Some(2599.996),
        }
    );
    assert_eq!(
        inv.memory,
        MemoryInfo {
            total_bytes: Some(24_684_084 * 1024),
            swap_bytes: Some(0),
        }
    );
    // loop0 and zram0 are in /sys/block but not reported.
    assert_eq!(
        inv.disks,
        [Disk {
            name: "vda".into(),
            model: None,
            serial: Some("overlayblk".into()),
            wwn: None,
            size_bytes: Some(536_870_912 * 512),
            rotational: Some(true),
            removable: Some(false),
            transport: Some("virtio".into()),
        }]
    );
    // lo and ifb0 resolve under devices/virtual and are left out.
    assert_eq!(
        inv.nics,
        [Nic {
            name: "eth0".into(),
            mac: Some("02:fc:00:00:00:01".into()),
            speed_mbps: None, // virtio_net reports -1
            carrier: Some(true),
            driver: Some("virtio_net".into()),
            mtu: Some(1400),
            ipv4: vec![v4("192.0.2.2")],
            ipv6: vec![v6("fd00::2"), v6("fe80::fc:ff:fe00:1")],
        }]
    );
    assert_eq!(
        inv.os,
        OsInfo {
            id: Some("debian".into()),
            name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            version: Some("12".into()),
            kernel: Some("6.18.44-fc-v669".into()),
            boot_mode: Some(BootMode::Bios),
        }
    );
    assert_eq!(inv.node_id, None);
    inv.validate().unwrap();
}

#[test]
fn dell_r650_inventory_field_by_field() {
    let inv = inventory::collect(&fixture("dell-r650"));
    assert_eq!(inv.hostname.as_deref(), Some("r650-07"));
    assert_eq!(
        inv.system,
        SystemInfo {
            vendor: Some("Dell Inc.".into()),
            product: Some("PowerEdge R650".into()),
            serial: Some("7XK4PH3".into()),
            uuid: Some("4c4c4544-0058-4b10-8034-b7c04f504833".into()),
            bios_vendor: Some("Dell Inc.".into()),
            bios_version: Some("1.10.2".into()),
            chassis_type: Some("23".into()),
        }
    );
    assert_eq!(
        inv.cpu,
        CpuInfo {
            model: Some("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".into()),
            vendor: Some("GenuineIntel".into()),
            sockets: Some(2),
            cores: Some(4),
            threads: Some(8),
            // Linux 5.15 has no /proc/sys/kernel/arch, and a fixture is not this host.
            arch: None,
            // cpufreq's cpuinfo_max_freq wins over the idle "cpu MHz" of cpu0 (800.000).
            mhz: Some(3200.0),
        }
    );
    assert_eq!(
        inv.memory,
        MemoryInfo {
            total_bytes: Some(263_596_988 * 1024),
            swap_bytes: Some(8_388_604 * 1024),
        }
    );
    assert_eq!(
        inv.disks,
        [
            Disk {
                name: "nvme0n1".into(),
                model: Some("Dell Ent NVMe CM6 RI 1.92TB".into()),
                serial: Some("Y1L0A02MTCE8".into()),
                wwn: Some("eui.36344630528029720025384500000001".into()),
                size_bytes: Some(1_920_383_410_176),
                rotational: Some(false),
                removable: Some(false),
                transport: Some("nvme".into()),
            },
            Disk {
                name: "sda".into(),
                model: Some("ST2000NM000A-2J2".into()),
                serial: Some("ZC20ABCD".into()), // from the binary VPD page 0x80
                wwn: Some("naa.5000c500d0a1b2c3".into()),
                size_bytes: Some(2_000_398_934_016),
                rotational: Some(true),
                removable: Some(false),
                transport: Some("sata".into()),
            },
            Disk {
                name: "sdb".into(),
                model: Some("Ultra Fit".into()),
                serial: None,
                wwn: None,
                size_bytes: Some(60_062_500 * 512),
                rotational: Some(true),
                removable: Some(true),
                transport: Some("usb".into()),
            },
        ]
    );
    // docker0, veth1a2b3c4 and lo are under devices/virtual; docker0's 172.17.0.1 and
    // fe80 address must not leak onto a physical NIC.
    assert_eq!(
        inv.nics,
        [
            Nic {
                name: "eno12399np0".into(),
                mac: Some("b0:7b:25:d4:e5:f0".into()),
                speed_mbps: Some(10_000),
                carrier: Some(true),
                driver: Some("bnxt_en".into()),
                mtu: Some(9000),
                ipv4: vec![v4("10.20.30.41"), v4("10.20.30.42")],
                ipv6: vec![v6("2001:db8:20:30::41"), v6("fe80::b27b:25ff:fed4:e5f0")],
            },
            Nic {
                name: "eno12409np1".into(),
                mac: Some("b0:7b:25:d4:e5:f1".into()),
                speed_mbps: None, // link down: the kernel refuses the read
                carrier: None,
                driver: Some("bnxt_en".into()),
                mtu: Some(1500),
                ipv4: vec![],
                ipv6: vec![],
            },
        ]
    );
    assert_eq!(
        inv.os,
        OsInfo {
            id: Some("ubuntu".into()),
            name: Some("Ubuntu 22.04.4 LTS".into()),
            version: Some("22.04".into()),
            kernel: Some("5.15.0-105-generic".into()),
            boot_mode: Some(BootMode::Uefi),
        }
    );
    assert_eq!(inv.node_id, None);
    inv.validate().unwrap();
}

#[test]
fn a_read_error_is_none_not_zero() {
    let dir = copy_fixture("dell-r650");
    let nic = dir
        .path()
        .join("sys/devices/pci0000:16/0000:16:02.0/0000:17:00.0/net/eno12399np0");
    // A directory in place of the file: reading it fails with EISDIR.
    fs::remove_file(nic.join("speed")).unwrap();
    fs::create_dir(nic.join("speed")).unwrap();
    fs::write(nic.join("mtu"), "garbage\n").unwrap();
    let inv = inventory::collect(dir.path());
    assert_eq!(inv.nics[0].speed_mbps, None);
    assert_eq!(inv.nics[0].mtu, None);
    assert_eq!(inv.nics[0].carrier, Some(true));
}
