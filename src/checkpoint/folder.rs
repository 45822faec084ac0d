//! A model written as a Hugging Face model folder: `model.safetensors` plus the files of the
//! folder the model came from that describe it (`config.json`, `generation_config.json`,
//! the tokenizer), so `AutoModelForCausalLM.from_pretrained(OUT)` and a tokenizer load it
//! as they loaded the input. An output names a folder when it ends with `/` (an existing
//! folder without it stays refused, as every output that is a folder is); anything else is
//! one safetensors file. Every file is prepared beside
//! its target first and the weights are committed last.

use super::writer::{prepare_checkpoint, AtomicFile, OwnedTensor};
use crate::error::{MnemoError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The weights file of a folder output.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A model folder's tokenizer files and `generation_config.json` (mergekit's list, plus
/// `vocab.json`, which its `merges.txt` needs): what a folder written from another carries.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
    "chat_template.json",
];

/// The files copied from the source folder: its `config.json` and [`TOKENIZER_FILES`].
fn companion_files() -> impl Iterator<Item = &'static str> {
    std::iter::once("config.json").chain(TOKENIZER_FILES.iter().copied())
}

/// The largest companion file copied (a tokenizer.json is a few MB; this is a bound, not a
/// size any real one has).
const MAX_COMPANION_BYTES: u64 = 1 << 30;

/// Whether `path` names a folder output: it ends with `/`.
pub fn is_folder_target(path: &Path) -> bool {
    path.as_os_str().to_string_lossy().ends_with('/')
}

/// Every file a folder output `dir` writes (for the destinations check).
pub fn folder_files() -> Vec<&'static str> {
    std::iter::once(WEIGHTS_FILE)
        .chain(companion_files())
        .collect()
}

/// The folder a model was read from, when it is a Hugging Face folder (holds a
/// `config.json`): the path itself, or the folder of a weights file.
pub fn source_folder(model: &Path) -> Option<PathBuf> {
    let dir = if model.is_dir() {
        model.to_path_buf()
    } else {
        model.parent()?.to_path_buf()
    };
    dir.join("config.json").is_file().then_some(dir)
}

/// A model output being written: the weights and the files copied beside them.
pub struct ModelOutput {
    weights: AtomicFile,
    companions: Vec<AtomicFile>,
}

impl ModelOutput {
    /// The weights file (the output itself, or `model.safetensors` in the folder).
    pub fn weights_path(&self) -> &Path {
        self.weights.target()
    }

    /// Puts the companions in place, then the weights.
    pub fn commit(self) -> Result<()> {
        for c in self.companions {
            c.commit()?;
        }
        self.weights.commit()
    }
}

/// Prepares `tensors` at `path`: one safetensors file, or for a folder target the folder
/// (created when missing) with `model.safetensors` and the companions `source` holds.
pub fn prepare_model_output(
    path: &Path,
    tensors: Vec<OwnedTensor>,
    metadata: &BTreeMap<String, String>,
    source: Option<&Path>,
) -> Result<ModelOutput> {
    if !is_folder_target(path) {
        return Ok(ModelOutput {
            weights: prepare_checkpoint(path, tensors, metadata)?,
            companions: vec![],
        });
    }
    std::fs::create_dir_all(path).map_err(|e| MnemoError::io(path, e))?;
    let mut companions = Vec::new();
    if let Some(src) = source {
        for name in companion_files() {
            let from = src.join(name);
            let Ok(m) = std::fs::metadata(&from) else {
                continue;
            };
            if !m.is_file() {
                continue;
            }
            if m.len() > MAX_COMPANION_BYTES {
                return Err(MnemoError::TooLarge {
                    what: from.display().to_string(),
                    reason: format!(
                        "{} bytes; a model folder's {name} is expected under {MAX_COMPANION_BYTES}",
                        m.len()
                    ),
                });
            }
            let bytes = crate::fsutil::read(&from)?;
            let mut f = AtomicFile::create(path.join(name))?;
            f.write_all(&bytes)?;
            f.sync()?;
            companions.push(f);
        }
    }
    Ok(ModelOutput {
        weights: prepare_checkpoint(path.join(WEIGHTS_FILE), tensors, metadata)?,
        companions,
    })
}
