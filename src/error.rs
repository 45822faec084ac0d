//! The library's error type: one variant per failure, each naming the file
//! (and tensor or line) it is about, so the CLI can print it as is.

use std::path::PathBuf;

/// Everything that can go wrong in mnemo's engine.
/// A setting of a run that input can fail to fit ([`MnemoError::Unfit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Loss,
    FisherMode,
    ImageSize,
    ImageShape,
    ArrayNames,
}

#[derive(Debug, thiserror::Error)]
pub enum MnemoError {
    /// Reading, writing or mapping a file failed at the OS level.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A safetensors file is malformed or hostile (bad header, offsets, sizes).
    #[error("{path}: invalid safetensors file: {reason}")]
    InvalidSafetensors { path: PathBuf, reason: String },

    /// A `torch.save` file is malformed, hostile, or holds more than tensors and containers.
    #[error("{path}: not read as a PyTorch checkpoint: {reason}")]
    InvalidPth { path: PathBuf, reason: String },

    /// A sharded checkpoint's `*.index.json` is malformed or inconsistent with its shards.
    #[error("{path}: invalid sharded checkpoint index: {reason}")]
    InvalidIndex { path: PathBuf, reason: String },

    /// A `--state` file is corrupt or was written by a different run (other inputs or settings).
    #[error("{path}: {reason}")]
    InvalidState { path: PathBuf, reason: String },

    /// An `--init-optimizer` file is not an optimizer state, is for another optimizer, or
    /// does not fit the model's trainable parameters.
    #[error("{path}: {reason}")]
    InvalidOptimizerState { path: PathBuf, reason: String },

    /// A tensor that was asked for does not exist in the file.
    #[error("{path}: no tensor named '{tensor}'")]
    MissingTensor { path: PathBuf, tensor: String },

    /// A tensor exists but its dtype cannot be used where it is needed.
    #[error("{path}: tensor '{tensor}' has dtype {dtype}, expected {expected}")]
    WrongDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
        expected: String,
    },

    /// A tensor's shape disagrees with what the model or another file says.
    #[error("{path}: tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },

    /// A token id in a model's input is not a row of its embedding.
    #[error("token id {id} is out of range for {layer} (an embedding of {rows} rows): the data was tokenized for another vocabulary")]
    TokenOutOfRange { layer: String, id: f64, rows: usize },

    /// A model that reads token ids was given other numbers (images, features).
    #[error("{layer} is an embedding and reads token ids, but the input holds {value}, not an integer: this is not token data (`mnemo data import text` makes it)")]
    NotTokenIds { layer: String, value: f64 },

    /// A checkpoint holds tensors the architecture does not have.
    #[error(
        "{path}: unexpected tensor '{tensor}' (not part of the architecture; first of {count})"
    )]
    UnexpectedTensor {
        path: PathBuf,
        tensor: String,
        count: usize,
    },

    /// The architecture spec could not be parsed or is inconsistent.
    #[error("invalid arch spec{}: {reason}", origin.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
    InvalidArch {
        origin: Option<String>,
        reason: String,
    },

    /// A checkpoint carries no `mnemo.arch` metadata and none was given.
    #[error(
        "{path}: no architecture: the file has no 'mnemo.arch' metadata and no spec was given"
    )]
    NoArch { path: PathBuf },

    /// A dataset file is unusable (wrong tensors, dtypes, counts or labels).
    #[error("{path}: invalid dataset: {reason}")]
    InvalidDataset { path: PathBuf, reason: String },

    /// A dataset that does not fit a setting of the run (the loss, the Fisher's mode, an
    /// image size or shape, the arrays to read): `setting` says which, so the CLI can name
    /// the flag that sets it.
    #[error("{path}: invalid dataset: {reason}")]
    Unfit {
        path: PathBuf,
        setting: Setting,
        reason: String,
    },

    /// A `tokenizer.json` that cannot be read or parsed, or a token a flag names that it
    /// lacks (`reason` names the flag).
    #[error("{path}: {reason}")]
    InvalidTokenizer { path: PathBuf, reason: String },

    /// A text input that cannot be used as documents (not UTF-8: the byte offset).
    #[error("{path}: {reason}")]
    InvalidText { path: PathBuf, reason: String },

    /// Inputs that give nothing to write (no documents, fewer tokens than one row).
    #[error("{reason}")]
    NoData { reason: String },

    /// A LoRA adapter (folder, config or weights) is unusable or does not fit the model.
    #[error("{path}: invalid LoRA adapter: {reason}")]
    InvalidAdapter { path: PathBuf, reason: String },

    /// LoRA target modules that select nothing or cannot be adapted.
    #[error("LoRA targets: {reason}")]
    InvalidTargets { reason: String },

    /// A replay buffer file is unusable (not a buffer, inconsistent, or from another model
    /// or dataset).
    #[error("{path}: invalid replay buffer: {reason}")]
    InvalidBuffer { path: PathBuf, reason: String },

    /// An input line of a JSON Lines stream could not be used.
    #[error("{path}:{line}: {reason}")]
    InvalidLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// A training log (JSON Lines) has nothing a loss curve can be drawn from.
    #[error("{path}: {reason}")]
    InvalidLog { path: PathBuf, reason: String },

    /// The requested compute device is not available in this build or machine.
    #[error("device '{device}' is not available: {reason}")]
    Device { device: String, reason: String },

    /// A numeric computation failed inside candle.
    #[error("{context}: {source}")]
    Compute {
        context: String,
        #[source]
        source: candle_core::Error,
    },

    /// A drift detector (`drift::build`) was given a parameter it does not have,
    /// a value that does not parse, or a value outside the parameter's domain.
    #[error("drift detector '{detector}': parameter '{parameter}': {reason}")]
    InvalidParameter {
        detector: String,
        parameter: String,
        reason: String,
    },

    /// `drift::build` was asked for a detector name it does not know.
    #[error("unknown drift detector '{name}' (known: {known})")]
    UnknownDetector { name: String, known: String },

    /// A merge (`merge::Method`) was given parameters or inputs that do not fit
    /// the method: wrong number of weights, a density outside [0, 1], a missing
    /// or superfluous base model, too few models, a zero Fisher norm.
    #[error("merge method '{method}': {reason}")]
    InvalidMerge { method: String, reason: String },

    /// A tensor holds NaN or ±infinity where a finite value is required: a merge
    /// input, or a merged value that overflows its output dtype (`path` is then
    /// the output file).
    #[error("{path}: tensor '{tensor}' element {index} is {value}: {reason}")]
    NonFinite {
        path: PathBuf,
        tensor: String,
        index: usize,
        value: f32,
        reason: String,
    },

    /// A setting from a `--config` file, an `MNEMO_*` environment variable or `--set` that
    /// names no flag or holds a value of the wrong type. `origin` names the file, table and
    /// key, the variable, or the `--set` word.
    #[error("{origin}: {reason}")]
    Config { origin: String, reason: String },

    /// A size from an input file or a flag that cannot be allocated (overflow, or beyond
    /// the machine's memory); refused before any allocation.
    #[error("{what}: too large: {reason}")]
    TooLarge { what: String, reason: String },

    /// A training run whose loss or weights became NaN or infinite: stopped, nothing
    /// written.
    #[error("training diverged {at}: {what} is {value}; stopped, nothing was written (lower the learning rate or check the data)")]
    Diverged {
        at: String,
        what: String,
        value: String,
    },

    /// An output that would destroy another file of the same command (an input, or another
    /// output), or that cannot be written (its folder is missing); found before any work.
    #[error("{path}: {reason}")]
    Destination { path: PathBuf, reason: String },

    /// A file argument that is not a regular file (a FIFO, a device, a socket), where a
    /// file is read as a whole.
    #[error("{path}: not a regular file ({kind}); give a file")]
    NotRegular { path: PathBuf, kind: String },

    /// An MLflow tracking server could not be reached or answered with an error.
    #[error("MLflow server {uri}: {reason}")]
    Mlflow { uri: String, reason: String },
}

pub type Result<T, E = MnemoError> = std::result::Result<T, E>;

impl MnemoError {
    /// `path` does not fit `setting`.
    pub fn unfit(setting: Setting, path: &std::path::Path, reason: impl Into<String>) -> Self {
        MnemoError::Unfit {
            path: path.to_path_buf(),
            setting,
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MnemoError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn compute(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        move |source| MnemoError::Compute { context, source }
    }
}
