//! The durable embedded store of Cnerium: records in append-only, checksummed log segments,
//! an index of them in memory.
//!
//! ```no_run
//! use cnerium_store_file::{FileStore, DEFAULT_DIR};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = FileStore::open(DEFAULT_DIR)?;
//! // ... hand `store` to the engine, serve ...
//! store.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! See [`FileStore`] for what survives a crash, and [`format`](mod@format) for the bytes on disk.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod compactor;
mod error;
pub mod format;
mod index;
mod lock;
mod options;
mod queue;
mod reader;
mod recent;
mod recovery;
mod segment;
mod shared;
mod store;
mod writer;

pub use error::OpenError;
pub use options::{FileStoreOptions, SyncMode};
pub use store::{DEFAULT_DIR, FileStore, FileStoreStats};
