//! Models built from arch specs: parameters as candle `Var`s named exactly as
//! torch names them, a forward pass in train or eval mode made only of ops
//! that have a backward (candle's fused norms and softmax do not), and
//! torch's default initialisation drawn from mnemo's own seeded RNG.

pub mod adapter;
pub mod conv;
mod decoder;
mod forward;
mod init;
pub mod norm;
pub(crate) mod ops;
mod partial;
mod snapshot;

pub use crate::arch::{join, ArchSpec, Children, Layer, ParamKind, ParamSpec, UpsampleMode};
pub use adapter::ModelAdapter;
pub use partial::MatchReport;
pub use snapshot::Snapshot;

use crate::checkpoint::Checkpoint;
use crate::error::{MnemoError, Result};
use crate::rng::Rng;
use candle_core::{Device, Tensor, Var};
use std::collections::BTreeMap;
use std::path::Path;

/// What `forward_tapped` records per linear layer (by layer name, e.g. `trunk.0`):
/// its input `[B, in]` and the zero probe added to its output `[B, out]`.
#[derive(Default)]
pub struct Taps {
    pub linear: BTreeMap<String, (Tensor, Var)>,
}

/// Metadata key holding the canonical arch spec JSON.
pub const ARCH_KEY: &str = "mnemo.arch";

/// Train mode uses batch statistics and dropout; eval mode uses running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// A model's tensors: trainable `Var`s and batchnorm state, keyed by torch name.
pub struct Model {
    pub spec: ArchSpec,
    pub device: Device,
    /// Trainable parameters, by name (sorted).
    pub params: BTreeMap<String, Var>,
    /// Batchnorm running statistics, by name.
    pub buffers: BTreeMap<String, Tensor>,
    /// Batchnorm `num_batches_tracked` counters, by name.
    pub counters: BTreeMap<String, i64>,
    /// An adapter being trained (LoRA: `lora::attach`): `params` then holds only the
    /// adapter's weights, and the base's are frozen inside it.
    pub adapter: Option<Box<dyn ModelAdapter>>,
    /// The head a `heads` container runs: set by `forward` for the length of one pass.
    active_head: Option<String>,
    /// The dtype each tensor had in the file it was loaded from, where that was not F32
    /// (a bf16 Hugging Face folder): the model computes in f32 and writes each tensor back
    /// in its own dtype, as `save_pretrained` keeps a model's dtype.
    pub stored_dtypes: BTreeMap<String, crate::checkpoint::Dtype>,
}

impl Model {
    /// A freshly initialised model with torch's default initialisation.
    pub fn init(spec: &ArchSpec, seed: u64, device: &Device) -> Result<Model> {
        // A spec far beyond this machine's memory is an error, not an allocator abort.
        let n: usize = spec
            .params()
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        Vec::<f32>::new()
            .try_reserve_exact(n)
            .map_err(|e| MnemoError::InvalidArch {
                origin: None,
                reason: format!("{n} values do not fit in memory ({e})"),
            })?;
        let mut rng = Rng::new(seed);
        let values = init::default_init(spec, &mut rng);
        Self::from_values(spec, values, BTreeMap::new(), device)
    }

    /// Loads a model from a checkpoint: every tensor of the spec must be present with the
    /// right shape, and no other tensor may be (as torch's `load_state_dict(strict=True)`).
    pub fn load(ckpt: &Checkpoint, spec: &ArchSpec, device: &Device) -> Result<Model> {
        let manifest = spec.params();
        let mut values = BTreeMap::new();
        let mut counters = BTreeMap::new();
        let mut stored_dtypes = BTreeMap::new();
        for p in &manifest {
            let e = ckpt.entry(&p.name)?;
            if e.shape != p.shape {
                // torch stores 0-dim counters; accept a [1] counter from other writers.
                let scalar_ok =
                    p.kind == ParamKind::Counter && e.shape.iter().product::<usize>() == 1;
                if !scalar_ok {
                    return Err(MnemoError::ShapeMismatch {
                        path: ckpt.path.clone(),
                        tensor: p.name.clone(),
                        found: e.shape.clone(),
                        expected: p.shape.clone(),
                    });
                }
            }
            if p.kind == ParamKind::Counter {
                counters.insert(p.name.clone(), ckpt.to_i64(&p.name)?[0]);
            } else {
                if !e.dtype.is_float() {
                    return Err(MnemoError::WrongDtype {
                        path: ckpt.path.clone(),
                        tensor: p.name.clone(),
                        dtype: e.dtype.to_string(),
                        expected: "a floating-point dtype".into(),
                    });
                }
                let v = ckpt.to_f32(&p.name)?;
                // NaN or ±inf would flow silently into every output (relu even hides NaN
                // from the loss), so a model with one is refused, not evaluated or trained.
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(MnemoError::NonFinite {
                        path: ckpt.path.clone(),
                        tensor: p.name.clone(),
                        index: i,
                        value: v[i],
                        reason: "a model's weights must be finite".into(),
                    });
                }
                values.insert(p.name.clone(), v);
                if e.dtype != crate::checkpoint::Dtype::F32 {
                    stored_dtypes.insert(p.name.clone(), e.dtype);
                }
            }
        }
        let known: std::collections::HashSet<&str> =
            manifest.iter().map(|p| p.name.as_str()).collect();
        let extra: Vec<&str> = ckpt.names().filter(|n| !known.contains(n)).collect();
        if let Some(first) = extra.first() {
            return Err(MnemoError::UnexpectedTensor {
                path: ckpt.path.clone(),
                tensor: first.to_string(),
                count: extra.len(),
            });
        }
        let mut model = Self::from_values(spec, values, counters, device)?;
        model.stored_dtypes = stored_dtypes;
        Ok(model)
    }

    /// Opens a checkpoint and loads it with its stored arch (or `arch` when given).
    pub fn open(path: &Path, arch: Option<&str>, device: &Device) -> Result<(Model, Checkpoint)> {
        let ckpt = Checkpoint::open(path)?;
        let spec = resolve_arch(&ckpt, arch)?;
        let model = Self::load(&ckpt, &spec, device)?;
        Ok((model, ckpt))
    }

    fn from_values(
        spec: &ArchSpec,
        mut values: BTreeMap<String, Vec<f32>>,
        mut counters: BTreeMap<String, i64>,
        device: &Device,
    ) -> Result<Model> {
        let mut params = BTreeMap::new();
        let mut buffers = BTreeMap::new();
        for p in spec.params() {
            match p.kind {
                ParamKind::Counter => {
                    counters.entry(p.name.clone()).or_insert(0);
                }
                kind => {
                    let v = values.remove(&p.name).unwrap_or_default();
                    let t = Tensor::from_vec(v, p.shape.as_slice(), device).map_err(
                        MnemoError::compute(format!("placing tensor '{}' on {device:?}", p.name)),
                    )?;
                    if kind == ParamKind::Trainable {
                        params.insert(
                            p.name,
                            Var::from_tensor(&t).map_err(MnemoError::compute("creating var"))?,
                        );
                    } else {
                        buffers.insert(p.name, t);
                    }
                }
            }
        }
        Ok(Model {
            spec: spec.clone(),
            device: device.clone(),
            params,
            buffers,
            counters,
            adapter: None,
            active_head: None,
            stored_dtypes: BTreeMap::new(),
        })
    }

    /// Trainable parameters sorted by name (a stable order for anything flattened).
    pub fn vars(&self) -> Vec<(&str, &Var)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.spec.num_parameters()
    }

    /// Checks a head choice against the spec; returns the head to use (the only head when
    /// there is one and none was named).
    pub fn choose_head(&self, head: Option<&str>) -> Result<Option<String>> {
        let heads = self.spec.head_names();
        let err = |reason: String| MnemoError::InvalidArch {
            origin: None,
            reason,
        };
        match head {
            None if heads.is_empty() => Ok(None),
            None if heads.len() == 1 => Ok(Some(heads[0].clone())),
            None => Err(err(format!(
                "the model has several heads; choose one of: {}",
                heads.join(", ")
            ))),
            Some(h) if heads.is_empty() => Err(err(format!(
                "head '{h}' chosen, but the model has a single output (no heads)"
            ))),
            Some(h) if heads.iter().any(|x| x == h) => Ok(Some(h.to_string())),
            Some(h) => Err(err(format!(
                "no head named '{h}'; the model's heads are: {}",
                heads.join(", ")
            ))),
        }
    }
}

/// The arch for a checkpoint: `--arch` when given, else its `mnemo.arch` metadata.
pub fn resolve_arch(ckpt: &Checkpoint, arch: Option<&str>) -> Result<ArchSpec> {
    match arch {
        Some(a) => ArchSpec::parse(a),
        None => match ckpt.metadata().get(ARCH_KEY) {
            Some(json) => ArchSpec::from_json(
                json,
                Some(&format!("{} metadata '{ARCH_KEY}'", ckpt.path.display())),
            ),
            // A Hugging Face model folder: the config.json beside the weights.
            None => match hf_config_beside(&ckpt.path) {
                Some((config, text)) => {
                    let origin = config.display().to_string();
                    let root = crate::arch::hf::causal_lm(&text).map_err(|reason| {
                        MnemoError::InvalidArch {
                            origin: Some(origin.clone()),
                            reason,
                        }
                    })?;
                    let spec = ArchSpec::Tree(root);
                    spec.validate().map_err(|reason| MnemoError::InvalidArch {
                        origin: Some(origin),
                        reason,
                    })?;
                    Ok(spec)
                }
                None => Err(MnemoError::NoArch {
                    path: ckpt.path.clone(),
                }),
            },
        },
    }
}

/// The transformers `config.json` in the folder of `weights`, when there is one.
fn hf_config_beside(weights: &Path) -> Option<(std::path::PathBuf, String)> {
    let config = weights.parent()?.join("config.json");
    let text = crate::fsutil::read_to_string(&config).ok()?;
    crate::arch::hf::is_transformers_config(&text).then_some((config, text))
}
