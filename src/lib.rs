//! ckptio core: fast, verified, crash-safe training checkpoints.
//!
//! A checkpoint is a directory holding safetensors files and a `ckptio.json` manifest
//! (see `docs/FORMAT.md`). This crate knows nothing of Python; the PyO3 binding lives
//! in [`python`] behind the `python` feature.

pub mod checksum;
pub mod cleanup;
pub mod commit;
pub mod copy;
pub mod dtype;
pub mod error;
pub mod fault;
pub mod foreign;
pub mod format;
mod fsync;
pub mod held_dir;
pub mod lifecycle;
pub mod limits;
pub mod manifest;
pub mod parts;
pub mod pool;
pub mod reader;
pub mod remote;
mod remote_load;
mod save_plan;
pub mod storage;
pub mod transfer;
pub mod warm;
pub mod writer;

#[cfg(feature = "python")]
mod python;

pub use cleanup::{cleanup_leftovers, Cleanup};
pub use dtype::Dtype;
pub use error::{Error, Result};
pub use manifest::Kind;
pub use reader::{open, Checkpoint, TensorInfo};
pub use storage::{Location, StorageOptions};
pub use writer::{save, save_with_files, GroupSource, SaveOptions, SideFile, TensorSource};
