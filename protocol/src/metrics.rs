//! The `metrics` topic: one sample of a host's load (DESIGN section 6). It doubles as the
//! heartbeat.
//!
//! Rates (network, disk I/O) need two readings, so an agent's first sample has them `null`.

use serde::{Deserialize, Serialize};

use crate::{NodeId, Timestamp};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsSample {
    pub ts: Timestamp,
    /// Busy share of all CPUs, 0..=100.
    pub cpu_percent: Option<f64>,
    pub load: Option<LoadAverage>,
    pub memory: Option<Usage>,
    pub swap: Option<Usage>,
    pub filesystems: Option<Vec<Filesystem>>,
    pub network: Option<NetworkRates>,
    pub disk_io: Option<DiskIoRates>,
    pub uptime_s: Option<u64>,
    pub temperatures_c: Option<Vec<Temperature>>,
    /// The agent's own report queue, when the agent has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxStats>,
    /// When present it must equal the topic's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// How many reports wait for a receipt, and how many progress reports were dropped
/// because the outbox was full (since the agent started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutboxStats {
    pub pending: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    pub used_bytes: u64,
    pub total_bytes: u64,
}

impl Usage {
    /// `used / total` in percent; `None` when the total is 0.
    pub fn percent(&self) -> Option<f64> {
        (self.total_bytes > 0).then(|| self.used_bytes as f64 * 100.0 / self.total_bytes as f64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Filesystem {
    pub mount: String,
    pub fs_type: Option<String>,
    /// Blocks in use (total − free), as `df` counts them.
    pub used_bytes: u64,
    /// The filesystem's size.
    pub total_bytes: u64,
    /// Space left for unprivileged users; excludes blocks reserved for root.
    #[serde(default)]
    pub available_bytes: Option<u64>,
}

/// Bytes per second summed over the physical NICs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkRates {
    pub rx_bytes_per_s: f64,
    pub tx_bytes_per_s: f64,
}

/// Bytes per second summed over the disks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskIoRates {
    pub read_bytes_per_s: f64,
    pub write_bytes_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Temperature {
    pub label: String,
    pub celsius: f64,
}

/// Why a sample was refused beyond plain type errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("{field} is {value}; expected {expected}")]
    OutOfRange {
        field: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("{field}: used {used} bytes is more than the total {total}")]
    UsedOverTotal {
        field: &'static str,
        used: u64,
        total: u64,
    },
    #[error("{field} lists {count} entries; at most {max} are accepted")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
}

impl MetricsSample {
    /// Most filesystems or temperature sensors one sample may carry.
    pub const MAX_ENTRIES: usize = 1024;

    /// Checks ranges that the type system cannot express.
    pub fn validate(&self) -> Result<(), MetricsError> {
        if let Some(cpu) = self.cpu_percent {
            in_range("cpu_percent", cpu, 0.0, 100.0, "0..=100")?;
        }
        if let Some(l) = self.load {
            for v in [l.one, l.five, l.fifteen] {
                in_range("load", v, 0.0, f64::MAX, "a non-negative number")?;
            }
        }
        for (field, usage) in [("memory", self.memory), ("swap", self.swap)] {
            if let Some(u) = usage {
                used_within(field, u.used_bytes, u.total_bytes)?;
            }
        }
        if let Some(fss) = &self.filesystems {
            count_within("filesystems", fss.len())?;
            for fs in fss {
                used_within("filesystems", fs.used_bytes, fs.total_bytes)?;
                if let Some(avail) = fs.available_bytes {
                    used_within("filesystems.available_bytes", avail, fs.total_bytes)?;
                }
            }
        }
        if let Some(n) = self.network {
            in_range(
                "network.rx_bytes_per_s",
                n.rx_bytes_per_s,
                0.0,
                f64::MAX,
                ">= 0",
            )?;
            in_range(
                "network.tx_bytes_per_s",
                n.tx_bytes_per_s,
                0.0,
                f64::MAX,
                ">= 0",
            )?;
        }
        if let Some(d) = self.disk_io {
            in_range(
                "disk_io.read_bytes_per_s",
                d.read_bytes_per_s,
                0.0,
                f64::MAX,
                ">= 0",
            )?;
            in_range(
                "disk_io.write_bytes_per_s",
                d.write_bytes_per_s,
                0.0,
                f64::MAX,
                ">= 0",
            )?;
        }
        if let Some(ts) = &self.temperatures_c {
            count_within("temperatures_c", ts.len())?;
            for t in ts {
                in_range(
                    "temperatures_c",
                    t.celsius,
                    -273.15,
                    1000.0,
                    "-273.15..=1000",
                )?;
            }
        }
        Ok(())
    }

    /// Used share of all filesystems together, in percent, the way `df` counts it:
    /// used / (used + available), so space reserved for root does not look used.
    pub fn storage_percent(&self) -> Option<f64> {
        let fss = self.filesystems.as_ref()?;
        // In u128: the values come from the network, and u64 sums could overflow.
        let used: u128 = fss.iter().map(|f| u128::from(f.used_bytes)).sum();
        let usable: u128 = fss
            .iter()
            .map(|f| match f.available_bytes {
                Some(avail) => u128::from(f.used_bytes) + u128::from(avail),
                None => u128::from(f.total_bytes),
            })
            .sum();
        (usable > 0).then(|| used as f64 * 100.0 / usable as f64)
    }
}

fn in_range(
    field: &'static str,
    value: f64,
    lo: f64,
    hi: f64,
    expected: &'static str,
) -> Result<(), MetricsError> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(MetricsError::OutOfRange {
            field,
            value,
            expected,
        })
    }
}

fn used_within(field: &'static str, used: u64, total: u64) -> Result<(), MetricsError> {
    if used <= total {
        Ok(())
    } else {
        Err(MetricsError::UsedOverTotal { field, used, total })
    }
}

fn count_within(field: &'static str, count: usize) -> Result<(), MetricsError> {
    if count <= MetricsSample::MAX_ENTRIES {
        Ok(())
    } else {
        Err(MetricsError::TooMany {
            field,
            count,
            max: MetricsSample::MAX_ENTRIES,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MetricsSample {
        serde_json::from_str(
            r#"{"ts":"2026-01-01T00:00:00Z","cpu_percent":12.5,
                "load":{"one":0.5,"five":0.25,"fifteen":0.1},
                "memory":{"used_bytes":25,"total_bytes":100},
                "swap":null,
                "filesystems":[{"mount":"/","fs_type":"ext4","used_bytes":30,"total_bytes":100,"available_bytes":20},
                               {"mount":"/var","fs_type":null,"used_bytes":10,"total_bytes":100}],
                "network":{"rx_bytes_per_s":125000.0,"tx_bytes_per_s":0.0},
                "disk_io":null,"uptime_s":3600,"temperatures_c":null}"#,
        )
        .unwrap()
    }

    #[test]
    fn more_than_max_entries_is_refused() {
        let mut s = sample();
        let fs = s.filesystems.as_ref().unwrap()[0].clone();
        s.filesystems = Some(vec![fs.clone(); MetricsSample::MAX_ENTRIES]);
        assert_eq!(s.validate(), Ok(()));
        s.filesystems = Some(vec![fs; MetricsSample::MAX_ENTRIES + 1]);
        assert!(matches!(
            s.validate(),
            Err(MetricsError::TooMany {
                field: "filesystems",
                ..
            })
        ));
    }

    #[test]
    fn parses_and_derives_percentages() {
        let s = sample();
        s.validate().unwrap();
        assert_eq!(s.memory.unwrap().percent(), Some(25.0));
        // (30 + 10) / ((30 + 20) + 100): root-reserved space on / is not counted.
        assert_eq!(s.storage_percent(), Some(40.0 * 100.0 / 150.0));
        assert_eq!(
            Usage {
                used_bytes: 0,
                total_bytes: 0
            }
            .percent(),
            None
        );
    }

    #[test]
    fn storage_percent_of_huge_values_does_not_overflow() {
        let mut s = sample();
        let fs = Filesystem {
            mount: "/".into(),
            fs_type: None,
            used_bytes: u64::MAX,
            total_bytes: u64::MAX,
            available_bytes: Some(0),
        };
        s.filesystems = Some(vec![fs.clone(), fs]);
        s.validate().unwrap();
        assert_eq!(s.storage_percent(), Some(100.0));
    }

    #[test]
    fn refuses_out_of_range_values() {
        let mut s = sample();
        s.cpu_percent = Some(250.0);
        assert!(matches!(
            s.validate(),
            Err(MetricsError::OutOfRange {
                field: "cpu_percent",
                ..
            })
        ));
        let mut s = sample();
        s.memory = Some(Usage {
            used_bytes: 101,
            total_bytes: 100,
        });
        assert!(matches!(
            s.validate(),
            Err(MetricsError::UsedOverTotal {
                field: "memory",
                ..
            })
        ));
        let mut s = sample();
        s.load = Some(LoadAverage {
            one: -1.0,
            five: 0.0,
            fifteen: 0.0,
        });
        assert!(s.validate().is_err());
    }

    #[test]
    fn refuses_wrong_types() {
        for bad in [
            r#"{"ts":"2026-01-01T00:00:00Z","cpu_percent":"high"}"#,
            r#"{"cpu_percent":1}"#,
            r#"{"ts":"2026-01-01T00:00:00Z","uptime_s":-3}"#,
            r#"{"ts":"2026-01-01T00:00:00Z","memory":{"used_bytes":1}}"#,
        ] {
            assert!(serde_json::from_str::<MetricsSample>(bad).is_err(), "{bad}");
        }
    }
}
