//! mnemo: continual learning without forgetting, over safetensors checkpoints
//! and JSON Lines. The library knows nothing of the command line; `src/cmd/`
//! maps arguments onto it. See ARCHITECTURE.md for the map.

pub mod arch;
pub mod checkpoint;
pub mod data;
pub mod drift;
pub mod error;
pub mod eval;
pub mod fsutil;
mod linalg;
pub mod logging;
pub mod lora;
pub mod loss;
pub mod merge;
pub mod metrics;
pub mod mlflow;
pub mod model;
pub mod provenance;
pub mod replay;
pub mod report;
pub mod rng;
pub mod train;
pub mod validate;

pub use error::{MnemoError, Result, Setting};
