//! Secret files both daemons keep (tokens, keys, the node credential): written whole
//! through a temporary file with the mode set at creation, and refused when others can
//! read them or another user owns them.

use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` with `mode` from the first byte on: a temporary file beside
/// it, synced, then renamed into place (so a reader sees the old file or the new one).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let _ = std::fs::remove_file(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| at(tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| at(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| at(path, e))
}

/// Writes a secret file, 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Refuses a secret file that others can read or write, or that another user owns.
pub fn check_private(path: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| at(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is readable by others or writable by them (mode {mode:o}); it holds a \
             secret: chmod 600 it",
            path.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "{} is owned by uid {}, not by this process's user (uid {me}); chown it",
            path.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Raises the open-file limit ([`raise_open_files`]) and warns, saying `why`, when it is
/// still below `need`.
pub fn ensure_open_files(need: u64, why: &str) {
    match raise_open_files() {
        Ok(limit) if limit < need => tracing::warn!(open_files = limit, need, "{why}"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// Raises this process's soft open-file limit to its hard limit, as Go's runtime does:
/// the soft limit is often 1,024, and a controller holds a descriptor per connected
/// agent (the simulator two per virtual agent). Returns the limit now in force.
pub fn raise_open_files() -> io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    // `None` is no limit: above any number.
    let below = match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(io::Error::from)?;
    }
    // `None` means no limit.
    Ok(limit.current.unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_goes_up_to_the_hard_one() {
        use rustix::process::{getrlimit, Resource};
        let now = raise_open_files().unwrap();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, limit.maximum);
        assert_eq!(Some(now), limit.current);
        // Again: nothing left to raise.
        assert_eq!(raise_open_files().unwrap(), now);
    }

    #[test]
    fn secret_files_are_private_from_the_start_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private(&path, b"x").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        check_private(&path).unwrap();
        // Replaced whole, never appended to.
        write_private(&path, b"y").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"y");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = check_private(&path).unwrap_err().to_string();
        assert!(err.contains("mode 640"), "{err}");
        write_atomic(&path, b"z", 0o640).unwrap();
        assert!(check_private(&dir.path().join("missing")).is_err());
    }
}
