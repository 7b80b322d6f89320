//! DMI data from `/sys/class/dmi/id`, with vendors' placeholder strings filtered out.
//!
//! Firmware often ships unfilled SMBIOS fields ("To Be Filled By O.E.M.", "Default string",
//! serial "0123456789", UUID `03000200-0400-0500-0006-000700080009`). Reporting those would
//! make different machines look alike, so they become `None`.

use std::path::Path;

use metalbus_protocol::inventory::SystemInfo;

use crate::collectors::sysfs;

const DMI: &str = "sys/class/dmi/id";

/// Strings that firmware puts in fields nobody filled (compared case-insensitively).
const PLACEHOLDERS: &[&str] = &[
    "to be filled by o.e.m.",
    "to be filled by oem",
    "default string",
    "not specified",
    "not applicable",
    "not available",
    "not present",
    "not settable",
    "system serial number",
    "system product name",
    "system manufacturer",
    "system version",
    "chassis serial number",
    "0123456789",
    "none",
    "n/a",
    "na",
    "unknown",
    "oem",
    "o.e.m.",
    "invalid",
];

/// A UUID some boards ship in every unit (a byte counter, not an id).
const COUNTER_UUID: &str = "03000200-0400-0500-0006-000700080009";

/// The value trimmed, or `None` for an empty string or a known placeholder. Strings made
/// only of one repeated filler (`0000000`, `FFFFFFFF`, `........`, ignoring `-` and
/// spaces) count as placeholders too.
pub(crate) fn meaningful(raw: &str) -> Option<String> {
    let value = raw.trim();
    let lower = value.to_ascii_lowercase();
    if value.is_empty() || PLACEHOLDERS.contains(&lower.as_str()) {
        return None;
    }
    let mut fill = lower.chars().filter(|c| !matches!(c, '-' | ' '));
    if let Some(first) = fill.next() {
        if matches!(first, '0' | 'f' | '.' | 'x' | '*') && fill.all(|c| c == first) {
            return None;
        }
    }
    Some(value.to_owned())
}

/// A DMI UUID lower-cased, or `None` when it is junk: empty, a placeholder, all zeros,
/// all `f`, or the well-known counter UUID.
pub(crate) fn clean_uuid(raw: &str) -> Option<String> {
    let uuid = meaningful(raw)?.to_ascii_lowercase();
    (uuid != COUNTER_UUID).then_some(uuid)
}

/// The machine's DMI `product_uuid`, cleaned by [`clean_uuid`].
pub(crate) fn product_uuid(root: &Path) -> Option<String> {
    clean_uuid(&sysfs::read_string(root, &format!("{DMI}/product_uuid"))?)
}

fn field(root: &Path, name: &str) -> Option<String> {
    meaningful(&sysfs::read_string(root, &format!("{DMI}/{name}"))?)
}

/// Reads every DMI field the inventory carries. `product_serial` and `product_uuid` are
/// readable by root only; as another user they are `None`.
pub(crate) fn collect(root: &Path) -> SystemInfo {
    SystemInfo {
        vendor: field(root, "sys_vendor"),
        product: field(root, "product_name"),
        serial: field(root, "product_serial"),
        uuid: product_uuid(root),
        bios_vendor: field(root, "bios_vendor"),
        bios_version: field(root, "bios_version"),
        chassis_type: field(root, "chassis_type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_vendor_placeholders() {
        for junk in [
            "",
            "   ",
            "To Be Filled By O.E.M.",
            "To be filled by O.E.M.",
            "Default string",
            "Not Specified",
            "System Serial Number",
            "0123456789",
            "None",
            "Not Settable",
            "00000000",
            "FFFFFFFF",
            "........",
        ] {
            assert_eq!(meaningful(junk), None, "{junk:?}");
        }
        assert_eq!(meaningful(" Dell Inc. \n").as_deref(), Some("Dell Inc."));
        assert_eq!(
            meaningful("PowerEdge R650").as_deref(),
            Some("PowerEdge R650")
        );
        assert_eq!(meaningful("23").as_deref(), Some("23"));
        assert_eq!(meaningful("0A1B").as_deref(), Some("0A1B"));
    }

    #[test]
    fn cleans_uuids() {
        assert_eq!(
            clean_uuid("4C4C4544-0058-4B10-8034-B7C04F504833").as_deref(),
            Some("4c4c4544-0058-4b10-8034-b7c04f504833")
        );
        for junk in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "03000200-0400-0500-0006-000700080009",
            "Not Settable",
            "",
        ] {
            assert_eq!(clean_uuid(junk), None, "{junk:?}");
        }
    }
}
