//! `metalbus backup FILE` (through the API, admin) and `metalbus restore FILE --data-dir
//! DIR` (on the box, with the controller stopped).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::client::{ApiClient, ClientError};
use crate::store::{check_backup, BackupInfo};

/// The file being written before it is complete: `FILE.partial`.
fn partial(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

fn summary(info: &BackupInfo) -> String {
    format!(
        "{} nodes, {} history entries, {} events, {} commands, {} API tokens (store schema {})",
        info.nodes, info.history, info.events, info.commands, info.tokens, info.schema
    )
}

/// Downloads a consistent copy of the store to `file` (a new file, mode 0600: it holds
/// token hashes and node keys), written whole or not at all. A directory gets a file
/// named after the time, `metalbus-20261129T031500Z.redb` (for a nightly timer).
pub async fn backup(api: ApiClient, file: PathBuf) -> Result<String, ClientError> {
    let file = if file.is_dir() {
        use metalbus_link::Clock as _;
        let now = metalbus_link::SystemClock::new().now().to_string();
        // 2026-11-29T03:15:00.123Z -> 20261129T031500Z
        let stamp: String = now
            .split('.')
            .next()
            .unwrap_or(&now)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        file.join(format!("metalbus-{stamp}Z.redb"))
    } else {
        file
    };
    if file.exists() {
        return Err(ClientError::Usage(format!(
            "{} exists; give a new file name",
            file.display()
        )));
    }
    let part = partial(&file);
    let mut resp = api.open_stream("/api/v1/backup").await?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&part)
        .map_err(|e| ClientError::Usage(format!("cannot write {}: {e}", part.display())))?;
    let written = async {
        while let Some(chunk) = resp.chunk().await.map_err(|e| api.unreachable(e))? {
            out.write_all(&chunk)
                .map_err(|e| ClientError::Usage(format!("writing {}: {e}", part.display())))?;
        }
        out.sync_all()
            .map_err(|e| ClientError::Usage(format!("writing {}: {e}", part.display())))?;
        check_backup(&part)
            .map_err(|e| api.protocol_error(format!("the backup received does not open: {e}")))
    }
    .await;
    let info = match written {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, &file)
        .map_err(|e| ClientError::Usage(format!("cannot rename to {}: {e}", file.display())))?;
    Ok(format!(
        "Backup written to {}: {}\n",
        file.display(),
        summary(&info)
    ))
}

/// Makes `file` belong to the owner and group of `dir`.
fn give_to_owner_of(dir: &Path, file: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir)
        .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", dir.display())))?;
    std::os::unix::fs::chown(file, Some(owner.uid()), Some(owner.gid())).map_err(|e| {
        ClientError::Usage(format!(
            "cannot give {} to the owner of {} (uid {}): {e}; run restore as root or as that user",
            file.display(),
            dir.display(),
            owner.uid()
        ))
    })
}

/// Puts the backup `file` in place of `DIR/metalbus.redb`. The controller must be
/// stopped (its store is locked while it runs). The store it replaces is kept as
/// `metalbus.redb.before-restore`. The restored store is 0600 and belongs to DIR's owner.
pub fn restore(file: &Path, data_dir: &Path) -> Result<String, ClientError> {
    let info = check_backup(file)
        .map_err(|e| ClientError::Usage(format!("{} cannot be restored: {e}", file.display())))?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ClientError::Usage(format!("cannot make {}: {e}", data_dir.display())))?;
    let store = data_dir.join("metalbus.redb");
    // A running controller holds the store's lock. (Any other trouble opening the old
    // store is what the restore is for.)
    if let Err(redb::DatabaseError::DatabaseAlreadyOpen) = redb::Database::open(&store) {
        return Err(ClientError::Usage(format!(
            "{} is open in a running controller: stop it first",
            store.display()
        )));
    }
    let part = partial(&store);
    let _ = std::fs::remove_file(&part);
    std::fs::copy(file, &part)
        .and_then(|_| std::fs::File::open(&part)?.sync_all())
        .map_err(|e| ClientError::Usage(format!("cannot copy to {}: {e}", part.display())))?;
    // The store holds token hashes and node keys: 0600 whatever the backup's mode. And
    // restore runs as root, but the controller runs as the data dir's owner (user
    // metalbus under the packaged unit), which could not open a store root owns.
    std::fs::set_permissions(&part, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(
        |e| ClientError::Usage(format!("cannot set the mode of {}: {e}", part.display())),
    )?;
    give_to_owner_of(data_dir, &part)?;
    let mut kept = String::new();
    if store.exists() {
        let old = data_dir.join("metalbus.redb.before-restore");
        std::fs::rename(&store, &old)
            .map_err(|e| ClientError::Usage(format!("cannot keep the old store: {e}")))?;
        kept = format!("; the store it replaced is {}", old.display());
    }
    std::fs::rename(&part, &store)
        .map_err(|e| ClientError::Usage(format!("cannot put the backup in place: {e}")))?;
    Ok(format!(
        "Restored {} into {}: {}{kept}\n",
        file.display(),
        store.display(),
        summary(&info)
    ))
}
