//! Temperatures from `/sys/class/hwmon/hwmon*/temp*_input` (millidegrees Celsius).
//!
//! The label is `tempN_label` when the driver gives one (`Package id 0`, `Composite`),
//! else the chip's `name` and the sensor index (`pch_lewisburg temp1`). Sensors that fail
//! to read (some return `EIO` or `ENODATA` while idle) or read outside -273.15..=1000 °C
//! are left out.

use std::path::Path;

use metalbus_protocol::metrics::Temperature;

use crate::collectors::sysfs;

const HWMON: &str = "sys/class/hwmon";

/// Every readable temperature sensor, in hwmon and sensor index order; `None` when there
/// is none.
pub(crate) fn temperatures(root: &Path) -> Option<Vec<Temperature>> {
    let mut chips: Vec<(u32, String)> = sysfs::list_dir(root, HWMON)
        .into_iter()
        .filter_map(|name| Some((name.strip_prefix("hwmon")?.parse().ok()?, name)))
        .collect();
    chips.sort();
    let mut out = Vec::new();
    for (_, chip) in chips {
        let dir = format!("{HWMON}/{chip}");
        let mut sensors: Vec<u32> = sysfs::list_dir(root, &dir)
            .iter()
            .filter_map(|f| f.strip_prefix("temp")?.strip_suffix("_input")?.parse().ok())
            .collect();
        sensors.sort_unstable();
        let chip_name =
            sysfs::read_string(root, &format!("{dir}/name")).unwrap_or_else(|| chip.clone());
        for index in sensors {
            let Some(milli) = sysfs::read_parse::<i64>(root, &format!("{dir}/temp{index}_input"))
            else {
                continue;
            };
            let celsius = milli as f64 / 1000.0;
            if !(-273.15..=1000.0).contains(&celsius) {
                continue;
            }
            let label = sysfs::read_string(root, &format!("{dir}/temp{index}_label"))
                .unwrap_or_else(|| format!("{chip_name} temp{index}"));
            out.push(Temperature { label, celsius });
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn reads_labels_names_and_skips_bad_sensors() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        assert_eq!(temperatures(r), None);
        let put = |rel: &str, text: &str| {
            let p = r.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        put("sys/class/hwmon/hwmon10/name", "nvme\n");
        put("sys/class/hwmon/hwmon10/temp1_input", "38850\n");
        put("sys/class/hwmon/hwmon10/temp1_label", "Composite\n");
        put("sys/class/hwmon/hwmon2/name", "pch_lewisburg\n");
        put("sys/class/hwmon/hwmon2/temp1_input", "52000\n");
        put("sys/class/hwmon/hwmon2/temp2_input", "9999999\n");
        put("sys/class/hwmon/hwmon2/temp3_input", "\n");
        let t = temperatures(r).unwrap();
        assert_eq!(
            t,
            [
                Temperature {
                    label: "pch_lewisburg temp1".into(),
                    celsius: 52.0
                },
                Temperature {
                    label: "Composite".into(),
                    celsius: 38.85
                },
            ]
        );
    }
}
