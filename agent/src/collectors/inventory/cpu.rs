//! CPU model, vendor and topology from `/proc/cpuinfo` and `/sys/devices/system/cpu`.
//!
//! - sockets: distinct `physical id`; cores: distinct (`physical id`, `core id`) pairs, else
//!   the sum of `cpu cores` per socket, else the sysfs `topology/` files (ARM has no ids
//!   in cpuinfo).
//! - threads: the CPUs listed in `devices/system/cpu/online`, else the `processor` count.
//! - mhz: `cpu0/cpufreq/cpuinfo_max_freq` (kHz), else cpuinfo's `cpu MHz`.
//! - arch: `/proc/sys/kernel/arch` (Linux 6.1+); on the host root, the build's arch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use metalbus_protocol::inventory::CpuInfo;

use crate::collectors::sysfs;

const CPU_DIR: &str = "sys/devices/system/cpu";

/// Reads the CPU section of the inventory.
pub(crate) fn collect(root: &Path) -> CpuInfo {
    let info = sysfs::read_text(root, "proc/cpuinfo")
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or_default();
    let sysfs_topology = || topology_from_sysfs(root);
    let sockets = info.sockets().or_else(|| sysfs_topology().sockets());
    let cores = info.cores().or_else(|| sysfs_topology().cores());
    let threads = sysfs::read_string(root, &format!("{CPU_DIR}/online"))
        .and_then(|list| count_cpu_list(&list))
        .or(info.processors);
    let max_khz =
        sysfs::read_parse::<f64>(root, &format!("{CPU_DIR}/cpu0/cpufreq/cpuinfo_max_freq"));
    let mhz = max_khz
        .map(|khz| khz / 1000.0)
        .or(info.mhz)
        .filter(|m| m.is_finite() && *m > 0.0);
    let arch = sysfs::read_string(root, "proc/sys/kernel/arch")
        .or_else(|| sysfs::is_host_root(root).then(|| std::env::consts::ARCH.to_owned()));
    CpuInfo {
        model: info.model,
        vendor: info.vendor,
        sockets,
        cores,
        threads,
        arch,
        mhz,
    }
}

/// Counts the CPUs in a kernel cpu list such as `0-3,8-11` (8). `None` when malformed
/// or empty.
pub(crate) fn count_cpu_list(list: &str) -> Option<u32> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let mut total: u32 = 0;
    for part in list.split(',') {
        let n = match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (u32, u32) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                hi.checked_sub(lo)?.checked_add(1)?
            }
            None => {
                part.trim().parse::<u32>().ok()?;
                1
            }
        };
        total = total.checked_add(n)?;
    }
    Some(total)
}

/// What `/proc/cpuinfo` tells.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Cpuinfo {
    pub model: Option<String>,
    pub vendor: Option<String>,
    /// Number of `processor` entries.
    pub processors: Option<u32>,
    pub mhz: Option<f64>,
    /// (physical id, core id) of each processor that has them.
    topology: Topology,
    /// `cpu cores` per `physical id`.
    cores_per_socket: BTreeMap<String, u32>,
}

/// Package and core ids of the logical CPUs.
#[derive(Debug, Default, PartialEq)]
struct Topology {
    packages: BTreeSet<String>,
    cores: BTreeSet<(String, String)>,
}

impl Topology {
    fn sockets(&self) -> Option<u32> {
        nonzero(self.packages.len())
    }
    fn cores(&self) -> Option<u32> {
        nonzero(self.cores.len())
    }
}

fn nonzero(n: usize) -> Option<u32> {
    u32::try_from(n).ok().filter(|n| *n > 0)
}

impl Cpuinfo {
    fn sockets(&self) -> Option<u32> {
        self.topology.sockets()
    }

    fn cores(&self) -> Option<u32> {
        self.topology.cores().or_else(|| {
            let sum: u32 = self.cores_per_socket.values().sum();
            (sum > 0).then_some(sum)
        })
    }
}

/// Parses `/proc/cpuinfo`: x86 (`model name`, `vendor_id`), arm64 (`CPU implementer`,
/// `CPU part`), older ARM (`Processor`, `Hardware`), POWER (`cpu`).
pub(crate) fn parse_cpuinfo(text: &str) -> Cpuinfo {
    let mut out = Cpuinfo::default();
    let mut processors = 0u32;
    // First value seen for each key, for the whole file.
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for block in text.split("\n\n") {
        let mut physical_id = None;
        let mut core_id = None;
        let mut cpu_cores = None;
        for line in block.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            first.entry(key).or_insert(value);
            match key {
                "processor" if value.parse::<u32>().is_ok() => processors += 1,
                "physical id" => physical_id = Some(value.to_owned()),
                "core id" => core_id = Some(value.to_owned()),
                "cpu cores" => cpu_cores = value.parse::<u32>().ok(),
                _ => {}
            }
        }
        if let Some(pkg) = physical_id {
            if let Some(n) = cpu_cores {
                out.cores_per_socket.entry(pkg.clone()).or_insert(n);
            }
            if let Some(core) = core_id {
                out.topology.cores.insert((pkg.clone(), core));
            }
            out.topology.packages.insert(pkg);
        }
    }
    let text_of = |key: &str| {
        first
            .get(key)
            .filter(|v| !v.is_empty())
            .map(|v| (*v).to_owned())
    };
    let implementer = first.get("CPU implementer").copied();
    let part = first.get("CPU part").copied();
    out.model = text_of("model name")
        .or_else(|| text_of("Processor"))
        .or_else(|| text_of("cpu model"))
        .or_else(|| text_of("cpu"))
        .or_else(|| arm_part_name(implementer?, part?).map(str::to_owned))
        .or_else(|| text_of("Hardware"));
    out.vendor = text_of("vendor_id")
        .or_else(|| text_of("vendor"))
        .or_else(|| arm_implementer_name(implementer?).map(str::to_owned));
    out.processors = (processors > 0).then_some(processors);
    out.mhz = first.get("cpu MHz").and_then(|v| v.parse().ok());
    out
}

fn hex(value: &str) -> Option<u32> {
    u32::from_str_radix(value.trim().trim_start_matches("0x"), 16).ok()
}

/// arm64 `CPU implementer` codes (the same table as util-linux's lscpu).
fn arm_implementer_name(implementer: &str) -> Option<&'static str> {
    Some(match hex(implementer)? {
        0x41 => "ARM",
        0x42 => "Broadcom",
        0x43 => "Cavium",
        0x46 => "Fujitsu",
        0x48 => "HiSilicon",
        0x4e => "NVIDIA",
        0x50 => "APM",
        0x51 => "Qualcomm",
        0x61 => "Apple",
        0x6d => "Microsoft",
        0xc0 => "Ampere",
        _ => return None,
    })
}

/// The server-class arm64 cores; others stay `None` rather than a made-up name.
fn arm_part_name(implementer: &str, part: &str) -> Option<&'static str> {
    Some(match (hex(implementer)?, hex(part)?) {
        (0x41, 0xd08) => "Cortex-A72",
        (0x41, 0xd0b) => "Cortex-A76",
        (0x41, 0xd0c) => "Neoverse-N1",
        (0x41, 0xd40) => "Neoverse-V1",
        (0x41, 0xd49) => "Neoverse-N2",
        (0x41, 0xd4f) => "Neoverse-V2",
        (0x43, 0x0af) => "ThunderX2 99xx",
        (0x48, 0xd01) => "Kunpeng-920",
        (0xc0, 0xac3) => "Ampere-1",
        (0xc0, 0xac4) => "Ampere-1a",
        _ => return None,
    })
}

/// Package and core ids from `cpuN/topology/`, for the CPUs whose ids are not negative.
fn topology_from_sysfs(root: &Path) -> Topology {
    let mut topo = Topology::default();
    for name in sysfs::list_dir(root, CPU_DIR) {
        let Some(index) = name.strip_prefix("cpu") else {
            continue;
        };
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let id = |file: &str| {
            sysfs::read_parse::<i64>(root, &format!("{CPU_DIR}/{name}/topology/{file}"))
                .filter(|v| *v >= 0)
                .map(|v| v.to_string())
        };
        let Some(pkg) = id("physical_package_id") else {
            continue;
        };
        if let Some(core) = id("core_id") {
            topo.cores.insert((pkg.clone(), core));
        }
        topo.packages.insert(pkg);
    }
    topo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cpu_lists() {
        assert_eq!(count_cpu_list("0-3,8-11\n"), Some(8));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0,2,4-5"), Some(4));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("0-x"), None);
        assert_eq!(count_cpu_list("a"), None);
    }

    const TWO_SOCKETS_HT: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n\
        cpu MHz\t\t: 800.000\nphysical id\t: 0\nsiblings\t: 4\ncore id\t\t: 0\ncpu cores\t: 2\n\n\
        processor\t: 1\nphysical id\t: 1\ncore id\t\t: 0\ncpu cores\t: 2\n\n\
        processor\t: 2\nphysical id\t: 0\ncore id\t\t: 1\ncpu cores\t: 2\n\n\
        processor\t: 3\nphysical id\t: 1\ncore id\t\t: 1\ncpu cores\t: 2\n\n\
        processor\t: 4\nphysical id\t: 0\ncore id\t\t: 0\ncpu cores\t: 2\n\n\
        processor\t: 5\nphysical id\t: 1\ncore id\t\t: 0\ncpu cores\t: 2\n\n";

    #[test]
    fn parses_x86_topology() {
        let c = parse_cpuinfo(TWO_SOCKETS_HT);
        assert_eq!(c.model.as_deref(), Some("Xeon"));
        assert_eq!(c.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(c.processors, Some(6));
        assert_eq!(c.sockets(), Some(2));
        assert_eq!(c.cores(), Some(4));
        assert_eq!(c.mhz, Some(800.0));
    }

    #[test]
    fn falls_back_to_cpu_cores_without_core_ids() {
        let c = parse_cpuinfo(
            "processor\t: 0\nphysical id\t: 0\ncpu cores\t: 8\n\n\
             processor\t: 1\nphysical id\t: 1\ncpu cores\t: 8\n",
        );
        assert_eq!(c.sockets(), Some(2));
        assert_eq!(c.cores(), Some(16));
    }

    #[test]
    fn parses_arm64_without_model_name() {
        let c = parse_cpuinfo(
            "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n\
             CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n\
             processor\t: 1\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n",
        );
        assert_eq!(c.model.as_deref(), Some("Neoverse-N1"));
        assert_eq!(c.vendor.as_deref(), Some("ARM"));
        assert_eq!(c.processors, Some(2));
        assert_eq!(c.sockets(), None);
        assert_eq!(c.cores(), None);
        assert_eq!(c.mhz, None);
    }

    #[test]
    fn unknown_arm_parts_stay_unknown() {
        let c = parse_cpuinfo("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xfff\n");
        assert_eq!(c.model, None);
        assert_eq!(c.vendor.as_deref(), Some("ARM"));
        assert_eq!(parse_cpuinfo(""), Cpuinfo::default());
    }
}
