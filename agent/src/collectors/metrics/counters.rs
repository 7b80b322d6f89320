//! Parsers for the procfs files metrics read, and the arithmetic that turns two readings of
//! monotonic counters into a percentage or a rate without ever going negative.

use std::collections::BTreeMap;

use metalbus_protocol::metrics::LoadAverage;

/// Aggregate CPU time from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// user + nice + system + irq + softirq + steal (guest time is already inside user).
    pub busy: u64,
    /// idle + iowait.
    pub idle: u64,
}

/// Reads the aggregate `cpu` line of `/proc/stat`.
pub(crate) fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    if v.len() < 4 {
        return None;
    }
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|i| at(*i))
        .try_fold(0u64, u64::checked_add)?;
    let idle = at(3).checked_add(at(4))?;
    Some(CpuTimes { busy, idle })
}

/// Busy share of all CPUs between two readings, 0..=100; `None` when no tick passed or the
/// busy counter went backwards (a reset).
pub(crate) fn cpu_percent(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let busy = after.busy.checked_sub(before.busy)?;
    // iowait may step backwards on some kernels; count that as no idle time, not an error.
    let idle = after.idle.saturating_sub(before.idle);
    let total = busy.checked_add(idle).filter(|t| *t > 0)?;
    Some((busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0))
}

/// Two byte counters per device name: (received, sent) or (read, written).
pub(crate) type Counters = BTreeMap<String, (u64, u64)>;

/// `/proc/net/dev`: receive bytes (first column) and transmit bytes (ninth) per interface.
pub(crate) fn parse_net_dev(text: &str) -> Counters {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let rx = f.first()?.parse().ok()?;
            let tx = f.get(8)?.parse().ok()?;
            Some((name.trim().to_owned(), (rx, tx)))
        })
        .collect()
}

/// `/proc/diskstats`: bytes read and written per device. The kernel counts 512-byte
/// sectors there whatever the device's real sector size.
pub(crate) fn parse_diskstats(text: &str) -> Counters {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let name = f.get(2)?;
            let read: u64 = f.get(5)?.parse().ok()?;
            let written: u64 = f.get(9)?.parse().ok()?;
            Some((
                (*name).to_owned(),
                (read.checked_mul(512)?, written.checked_mul(512)?),
            ))
        })
        .collect()
}

/// Bytes per second over `elapsed_s`, summed over `names`. A device missing from either
/// reading adds nothing; a counter that went backwards (reset, wrap, device replaced) adds
/// nothing for this interval. `None` when no named device is in both readings.
pub(crate) fn rates(
    before: &Counters,
    after: &Counters,
    names: &[String],
    elapsed_s: f64,
) -> Option<(f64, f64)> {
    if !(elapsed_s.is_finite() && elapsed_s > 0.0) {
        return None;
    }
    let mut seen = false;
    let (mut a, mut b) = (0u64, 0u64);
    for name in names {
        let (Some(old), Some(new)) = (before.get(name), after.get(name)) else {
            continue;
        };
        seen = true;
        a = a.saturating_add(new.0.saturating_sub(old.0));
        b = b.saturating_add(new.1.saturating_sub(old.1));
    }
    seen.then(|| (a as f64 / elapsed_s, b as f64 / elapsed_s))
}

/// `/proc/loadavg`: the 1, 5 and 15 minute averages.
pub(crate) fn parse_loadavg(text: &str) -> Option<LoadAverage> {
    let mut f = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0));
    Some(LoadAverage {
        one: f.next()??,
        five: f.next()??,
        fifteen: f.next()??,
    })
}

/// `/proc/uptime`: whole seconds since boot.
pub(crate) fn parse_uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| secs.floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_times_without_double_counting_guests() {
        let t = parse_cpu_times("cpu  2127 0 1388 92118 209 0 23 8 100 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(
            t,
            CpuTimes {
                busy: 2127 + 1388 + 23 + 8,
                idle: 92118 + 209
            }
        );
        assert_eq!(parse_cpu_times("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_cpu_times("cpu  1 2 x 4\n"), None);
        assert_eq!(parse_cpu_times("cpu  1 2\n"), None);
    }

    #[test]
    fn cpu_percent_from_deltas() {
        let a = CpuTimes {
            busy: 100,
            idle: 900,
        };
        assert_eq!(
            cpu_percent(
                a,
                CpuTimes {
                    busy: 400,
                    idle: 1600
                }
            ),
            Some(30.0)
        );
        assert_eq!(cpu_percent(a, a), None);
        assert_eq!(
            cpu_percent(
                a,
                CpuTimes {
                    busy: 50,
                    idle: 2000
                }
            ),
            None
        );
        assert_eq!(
            cpu_percent(
                a,
                CpuTimes {
                    busy: 200,
                    idle: 800
                }
            ),
            Some(100.0)
        );
    }

    #[test]
    fn parses_net_dev_including_glued_columns() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0:133678019    6352    0    0    0     0          0         0   357279    3165    0    0    0     0       0          0
";
        let c = parse_net_dev(text);
        assert_eq!(c["eth0"], (133_678_019, 357_279));
        assert_eq!(c["lo"], (3193, 3193));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn parses_diskstats_sectors_as_bytes() {
        let c = parse_diskstats(" 254       0 vda 7816 4421 2431626 5933 2438 33792 1905088 4445 0 2808 10624 3398 70 89392 244 18 1\n   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0\n");
        assert_eq!(c["vda"], (2_431_626 * 512, 1_905_088 * 512));
        assert_eq!(c["loop0"], (0, 0));
    }

    #[test]
    fn rates_never_go_negative() {
        let names = ["eth0".to_owned(), "eth1".to_owned(), "gone".to_owned()];
        let before: Counters = [
            ("eth0".into(), (1000, 500)),
            ("eth1".into(), (9000, 100)),
            ("gone".into(), (1, 1)),
        ]
        .into();
        let after: Counters = [
            ("eth0".into(), (3000, 1500)),
            ("eth1".into(), (10, 300)),
            ("new".into(), (5, 5)),
        ]
        .into();
        assert_eq!(rates(&before, &after, &names, 10.0), Some((200.0, 120.0)));
        assert_eq!(rates(&before, &after, &names, 0.0), None);
        assert_eq!(rates(&before, &after, &["new".to_owned()], 10.0), None);
    }

    #[test]
    fn parses_loadavg_and_uptime() {
        let l = parse_loadavg("0.09 0.07 0.02 1/84 3648\n").unwrap();
        assert_eq!((l.one, l.five, l.fifteen), (0.09, 0.07, 0.02));
        assert!(parse_loadavg("0.09 0.07\n").is_none());
        assert!(parse_loadavg("0.09 x 0.02\n").is_none());
        assert_eq!(parse_uptime("480.83 921.18\n"), Some(480));
        assert_eq!(parse_uptime("-1 0\n"), None);
        assert_eq!(parse_uptime(""), None);
    }
}
