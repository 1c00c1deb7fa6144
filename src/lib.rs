//! ckptio core: fast, verified, crash-safe training checkpoints.
//!
//! A checkpoint is a directory holding safetensors files and a `ckptio.json` manifest
//! (see `docs/FORMAT.md`). This crate knows nothing of Python; the PyO3 binding lives
//! in [`python`] behind the `python` feature.

pub mod checksum;
pub mod commit;
pub mod copy;
pub mod dtype;
pub mod error;
pub mod fault;
pub mod format;
pub mod lifecycle;
pub mod manifest;
pub mod pool;
pub mod reader;
pub mod writer;

#[cfg(feature = "python")]
mod python;

pub use commit::cleanup_leftovers;
pub use dtype::Dtype;
pub use error::{Error, Result};
pub use manifest::Kind;
pub use reader::{open, Checkpoint, TensorInfo};
pub use writer::{save, GroupSource, SaveOptions, TensorSource};
