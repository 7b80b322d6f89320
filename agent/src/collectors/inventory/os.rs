//! The operating system: `os-release`, the running kernel, and how the firmware booted.

use std::collections::BTreeMap;
use std::path::Path;

use metalbus_protocol::inventory::{BootMode, OsInfo};

use crate::collectors::sysfs;

/// Reads the OS section of the inventory.
pub(crate) fn collect(root: &Path) -> OsInfo {
    let release = sysfs::read_text(root, "etc/os-release")
        .or_else(|| sysfs::read_text(root, "usr/lib/os-release"))
        .map(|t| parse_os_release(&t))
        .unwrap_or_default();
    let get = |key: &str| release.get(key).filter(|v| !v.is_empty()).cloned();
    OsInfo {
        id: get("ID"),
        name: get("PRETTY_NAME").or_else(|| get("NAME")),
        version: get("VERSION_ID"),
        kernel: sysfs::read_string(root, "proc/sys/kernel/osrelease"),
        boot_mode: boot_mode(root),
    }
}

/// UEFI when the kernel exposes `/sys/firmware/efi`; BIOS when `/sys/firmware` is there
/// without it; unknown when sysfs is not there at all.
pub(crate) fn boot_mode(root: &Path) -> Option<BootMode> {
    if sysfs::exists(root, "sys/firmware/efi") {
        Some(BootMode::Uefi)
    } else if sysfs::exists(root, "sys/firmware") {
        Some(BootMode::Bios)
    } else {
        None
    }
}

/// Parses os-release(5): `KEY=value` lines, values optionally in double quotes (with
/// `\`-escapes) or single quotes; `#` comments and malformed lines are skipped.
pub(crate) fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        if let Some(value) = unquote(raw.trim()) {
            out.insert(key.to_owned(), value);
        }
    }
    out
}

fn unquote(raw: &str) -> Option<String> {
    if let Some(inner) = raw.strip_prefix('"') {
        let inner = inner.strip_suffix('"')?;
        let mut value = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            value.push(if c == '\\' { chars.next()? } else { c });
        }
        Some(value)
    } else if let Some(inner) = raw.strip_prefix('\'') {
        Some(inner.strip_suffix('\'')?.to_owned())
    } else {
        Some(raw.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoting_styles() {
        let r = parse_os_release(
            "# comment\nPRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nID=ubuntu\nVERSION_ID='22.04'\n\
             NAME=\"say \\\"hi\\\" \\\\ \\$HOME\"\nEMPTY=\nbroken line\n=novalue\nBAD=\"unterminated\n",
        );
        assert_eq!(r["PRETTY_NAME"], "Ubuntu 22.04.4 LTS");
        assert_eq!(r["ID"], "ubuntu");
        assert_eq!(r["VERSION_ID"], "22.04");
        assert_eq!(r["NAME"], "say \"hi\" \\ $HOME");
        assert_eq!(r["EMPTY"], "");
        assert!(!r.contains_key("BAD"));
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn boot_mode_follows_sys_firmware() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(boot_mode(dir.path()), None);
        std::fs::create_dir_all(dir.path().join("sys/firmware/acpi")).unwrap();
        assert_eq!(boot_mode(dir.path()), Some(BootMode::Bios));
        std::fs::create_dir_all(dir.path().join("sys/firmware/efi")).unwrap();
        assert_eq!(boot_mode(dir.path()), Some(BootMode::Uefi));
    }
}
