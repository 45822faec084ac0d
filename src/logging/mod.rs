//! Run files that tracking tools read: TensorBoard event files and Weights & Biases offline
//! runs (`mnemo log tensorboard`, `mnemo log wandb`; MLflow's REST API is `crate::mlflow`).
//! The JSON Lines → metric mapping they share is `crate::mlflow::record_metrics`.

pub mod proto;
pub mod tensorboard;
pub mod wandb;
