//! A test backend: a redb backend with a switch that makes every write and sync fail, to
//! test what the store and the engine do when the disk does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{Database, StorageBackend};

use super::{Opener, StoreError};

#[derive(Debug)]
pub struct FlakyBackend {
    inner: FileBackend,
    failing: Arc<AtomicBool>,
}

impl FlakyBackend {
    /// An opener for a database in `path` whose writes fail while `failing` is true.
    pub fn opener(path: std::path::PathBuf, failing: Arc<AtomicBool>) -> Opener {
        Box::new(move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| StoreError::Db {
                    op: "open test file",
                    source: e.into(),
                })?;
            let inner = FileBackend::new(file).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
            let backend = FlakyBackend {
                inner,
                failing: failing.clone(),
            };
            Database::builder()
                .create_with_backend(backend)
                .map_err(|source| StoreError::Open {
                    path: path.clone(),
                    source,
                })
        })
    }

    fn check(&self) -> Result<(), std::io::Error> {
        if self.failing.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected I/O error"))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FlakyBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }
}
