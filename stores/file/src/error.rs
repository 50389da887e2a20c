//! Why a data directory could not be opened.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why [`FileStore::open`](crate::FileStore::open) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// Another store, in this process or another, holds the directory's lock.
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The holder's process id as it wrote it into the lock file, when readable.
        pid: Option<u32>,
    },
    /// The options cannot work.
    InvalidOptions(&'static str),
    /// A segment file was written by a newer, unknown format version.
    UnsupportedFormat {
        /// The segment file.
        path: PathBuf,
        /// The version its header names.
        version: u32,
    },
    /// A file system operation failed.
    Io {
        /// What the store was doing.
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl OpenError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Locked {
                dir,
                pid: Some(pid),
            } => write!(
                f,
                "data directory {} is in use by process {pid}; stop that process or give this \
                 one another data directory (one process per directory)",
                dir.display()
            ),
            Self::Locked { dir, pid: None } => write!(
                f,
                "data directory {} is in use by another process; stop it or give this one \
                 another data directory (one process per directory)",
                dir.display()
            ),
            Self::InvalidOptions(problem) => write!(f, "invalid file store options: {problem}"),
            Self::UnsupportedFormat { path, version } => write!(
                f,
                "segment {} has format version {version}, this build reads version {}; \
                 open the directory with a newer build",
                path.display(),
                crate::format::FORMAT_VERSION
            ),
            Self::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
