//! One process per data directory: an exclusive advisory lock on `LOCK`, naming its holder.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use fs4::fs_std::FileExt;

use crate::error::OpenError;

/// Name of the lock file inside the data directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// The held lock; dropping it closes the file, which releases the lock.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` without waiting, and writes this process's id into it.
    pub(crate) fn acquire(dir: &Path) -> Result<Self, OpenError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| OpenError::io("open lock file", &path, e))?;

        let locked = file
            .try_lock_exclusive()
            .map_err(|e| OpenError::io("lock", &path, e))?;
        if !locked {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(OpenError::Locked {
                dir: dir.to_path_buf(),
                pid,
            });
        }

        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(|e| OpenError::io("write lock file", &path, e))?;
        Ok(Self { _file: file })
    }
}
