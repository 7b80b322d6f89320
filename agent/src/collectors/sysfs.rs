//! Reading sysfs, procfs and `/etc` files below a root directory, for the collectors.
//!
//! Every reader returns `Option`: a file that is missing, unreadable (sysfs answers some
//! reads with `EINVAL`, e.g. `carrier` of a downed link) or unparsable is `None`, never 0
//! or a placeholder.
//!
//! Paths are given relative to the root (`"sys/class/net/eth0/address"`). Symlinks are
//! resolved by [`resolve`] *inside* the root: an absolute link target is taken relative to
//! the root and `..` never climbs above it, so a fixture tree never leaks into the real
//! `/sys` of the machine running the tests.

use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// Links followed before a path is declared a loop (the kernel's own limit).
const MAX_LINK_HOPS: usize = 40;

enum Step {
    Up,
    Down(OsString),
}

fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::ParentDir => Some(Step::Up),
        Component::Normal(name) => Some(Step::Down(name.to_os_string())),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Resolves every symlink in `rel` inside `root` and returns the result relative to the
/// root (no leading `/`). Components that do not exist are kept as they are, so the result
/// names where a file *would* be. `None` only for a symlink loop.
pub(crate) fn resolve(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut todo: Vec<Step> = steps(Path::new(rel)).rev().collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(step) = todo.pop() {
        let name = match step {
            Step::Up => {
                done.pop();
                continue;
            }
            Step::Down(name) => name,
        };
        done.push(name);
        let here: PathBuf = root.join(done.iter().collect::<PathBuf>());
        // read_link fails for anything that is not a symlink, including missing paths.
        let Ok(target) = fs::read_link(&here) else {
            continue;
        };
        hops += 1;
        if hops > MAX_LINK_HOPS {
            return None;
        }
        done.pop();
        if target.is_absolute() {
            done.clear();
        }
        todo.extend(steps(&target).rev());
    }
    Some(done.iter().collect())
}

/// The full path of `rel` under `root`, symlinks resolved inside the root.
pub(crate) fn path(root: &Path, rel: &str) -> Option<PathBuf> {
    resolve(root, rel).map(|r| root.join(r))
}

/// The file's bytes as they are.
pub(crate) fn read_bytes(root: &Path, rel: &str) -> Option<Vec<u8>> {
    fs::read(path(root, rel)?).ok()
}

/// The whole file as text (invalid UTF-8 replaced), untrimmed: for procfs tables.
pub(crate) fn read_text(root: &Path, rel: &str) -> Option<String> {
    read_bytes(root, rel).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The file's content, trimmed; an empty file is `None`.
pub(crate) fn read_string(root: &Path, rel: &str) -> Option<String> {
    let text = read_text(root, rel)?;
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// The file's trimmed content parsed as `T`.
pub(crate) fn read_parse<T: FromStr>(root: &Path, rel: &str) -> Option<T> {
    read_string(root, rel)?.parse().ok()
}

/// A sysfs flag: `0` or `1`. Anything else is `None`.
pub(crate) fn read_flag(root: &Path, rel: &str) -> Option<bool> {
    match read_string(root, rel)?.as_str() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// Whether anything (file, directory, or a link whose target exists) is at `rel`.
pub(crate) fn exists(root: &Path, rel: &str) -> bool {
    path(root, rel).is_some_and(|p| p.exists())
}

/// The last component of where the symlink at `rel` points, e.g. the driver name from
/// `device/driver`. `None` when `rel` is not a symlink.
pub(crate) fn link_name(root: &Path, rel: &str) -> Option<String> {
    let (parent, _) = rel.rsplit_once('/')?;
    let dir = path(root, parent)?;
    let leaf = Path::new(rel).file_name()?;
    fs::read_link(dir.join(leaf)).ok()?;
    let target = resolve(root, rel)?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The names in a directory, sorted; empty when it cannot be read.
pub(crate) fn list_dir(root: &Path, rel: &str) -> Vec<String> {
    let Some(dir) = path(root, rel) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Whether `root` is the real filesystem root, where sysinfo and build-time facts may be
/// used to fill what files under the root cannot answer.
pub(crate) fn is_host_root(root: &Path) -> bool {
    root.components().eq(Path::new("/").components())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("sys/devices/pci0/net/eth0")).unwrap();
        fs::create_dir_all(r.join("sys/class/net")).unwrap();
        fs::create_dir_all(r.join("sys/bus/pci/drivers/e1000e")).unwrap();
        fs::write(r.join("sys/devices/pci0/net/eth0/mtu"), "1500\n").unwrap();
        fs::write(r.join("sys/devices/pci0/net/eth0/carrier"), "1\n").unwrap();
        fs::write(r.join("sys/devices/pci0/net/eth0/empty"), "\n").unwrap();
        symlink("../../devices/pci0/net/eth0", r.join("sys/class/net/eth0")).unwrap();
        symlink("../..", r.join("sys/devices/pci0/net/eth0/device")).unwrap();
        symlink(
            "../bus/pci/drivers/e1000e",
            r.join("sys/devices/pci0/driver"),
        )
        .unwrap();
        // Absolute and escaping links must stay inside the root.
        symlink("/sys/devices/pci0", r.join("sys/class/net/abs")).unwrap();
        symlink("../../../../../../../sys", r.join("sys/class/net/up")).unwrap();
        symlink("loop", r.join("sys/class/net/loop")).unwrap();
        dir
    }

    #[test]
    fn resolves_relative_links_inside_the_root() {
        let t = tree();
        let r = t.path();
        assert_eq!(
            resolve(r, "sys/class/net/eth0/mtu").unwrap(),
            Path::new("sys/devices/pci0/net/eth0/mtu")
        );
        assert_eq!(read_parse::<u32>(r, "sys/class/net/eth0/mtu"), Some(1500));
        assert_eq!(read_flag(r, "sys/class/net/eth0/carrier"), Some(true));
        assert_eq!(
            link_name(r, "sys/class/net/eth0/device/driver").as_deref(),
            Some("e1000e")
        );
    }

    #[test]
    fn absolute_and_escaping_links_stay_in_the_root() {
        let t = tree();
        let r = t.path();
        assert_eq!(
            resolve(r, "sys/class/net/abs").unwrap(),
            Path::new("sys/devices/pci0")
        );
        assert_eq!(resolve(r, "sys/class/net/up").unwrap(), Path::new("sys"));
        assert_eq!(resolve(r, "sys/class/net/loop"), None);
    }

    #[test]
    fn unreadable_or_empty_is_none() {
        let t = tree();
        let r = t.path();
        assert_eq!(read_string(r, "sys/class/net/eth0/empty"), None);
        assert_eq!(read_string(r, "sys/class/net/eth0/speed"), None);
        assert_eq!(read_parse::<u32>(r, "sys/class/net/eth0/carrier"), Some(1));
        assert_eq!(read_parse::<u32>(r, "sys/class/net/eth0"), None);
        assert_eq!(link_name(r, "sys/class/net/eth0/mtu"), None);
        assert!(exists(r, "sys/class/net/eth0"));
        assert!(!exists(r, "sys/class/net/eth9"));
        assert_eq!(list_dir(r, "sys/class/net"), ["abs", "eth0", "loop", "up"]);
        assert!(list_dir(r, "nope").is_empty());
    }

    #[test]
    fn knows_the_host_root() {
        assert!(is_host_root(Path::new("/")));
        assert!(is_host_root(Path::new("/.")));
        assert!(!is_host_root(Path::new("/tmp")));
    }
}
