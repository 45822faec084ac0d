//! Model merging, streamed tensor by tensor.
//!
//! Every method combines the same-named tensors of several checkpoints
//! ("inputs", θ₁…θₙ), sometimes relative to a `base` checkpoint. The
//! formulas are those of mergekit (<https://github.com/arcee-ai/mergekit>,
//! the reference of `fixtures/merge/gen.py`) unless a method's documentation
//! says otherwise; mergekit's code is not used here, only its definitions.
//!
//! | method            | formula (per tensor; δᵢ = θᵢ − base)                                 |
//! |-------------------|----------------------------------------------------------------------|
//! | `linear`          | Σ wᵢθᵢ, divided by Σ wᵢ with `normalize`                             |
//! | `ema`             | D·θ₁ + (1−D)·θ₂ (θ₁ the EMA/target model, θ₂ the online model)       |
//! | `fisher`          | Σ cᵢFᵢθᵢ / (Σ cᵢFᵢ + eps), cᵢ = wᵢ (or wᵢ/‖Fᵢ‖ with `normalize`)     |
//! | `task_arithmetic` | base + λ·Σ wᵢδᵢ                                                      |
//! | `ties`            | base + λ·Σ_agree wᵢδ̂ᵢ / Σ_agree wᵢ, δ̂ᵢ = top-⌊d·n⌋ magnitudes of δᵢ |
//! | `dare`            | base + λ·Σ wᵢ·(mᵢ⊙δᵢ)/d, mᵢ ~ Bernoulli(d) (or TIES on the result)    |
//! | `breadcrumbs`     | base + λ·Σ wᵢδᵢ, the smallest and the largest magnitudes of δᵢ dropped |
//! | `slerp`           | sin((1−t)Ω)/sinΩ·θ₁ + sin(tΩ)/sinΩ·θ₂, cos Ω = θ̂₁·θ̂₂                |
//! | `model_stock`     | t·mean(θᵢ) + (1−t)·base, t = k·cos/(1+(k−1)·cos)                     |
//! | `sum`             | Σ θᵢ                                                                 |
//!
//! The pieces:
//! - [`Method`]: the method and its parameters (serde: `{"method": "ties", "density": 0.3, …}`).
//! - [`merge_tensor`]: the per-tensor kernel on in-memory f32 slices.
//! - [`merge_checkpoints`]: the driver: validates the inputs, streams every tensor
//!   through the kernel and writes one safetensors file atomically.
//! - [`dare_keep_mask`]: the exact Bernoulli mask DARE uses, for checks.
//!
//! # Numerics
//! Values are decoded to f32 (f16/bf16 exactly, f64 rounded), element-wise
//! combinations are accumulated in f64 and rounded once to f32, then to the
//! output dtype (round to nearest even). Tensor-wide reductions (norms, dot
//! products, L1 sums) are f64, summed in a fixed order, so results do not
//! depend on the thread count. mergekit computes f16/bf16 merges in their own
//! dtype by default (its `dtype:` option); we always compute in f32 and round
//! once, which is what mergekit gives with `dtype: float32`.
//!
//! # Non-float tensors
//! Integer and bool tensors (e.g. batchnorm's `num_batches_tracked`) are not
//! merged: the first input's tensor is copied unchanged, whatever the other
//! inputs hold (mergekit refuses to merge when such buffers differ).
//!
//! # NaN and infinity
//! By default a NaN or ±inf in any input, base or Fisher tensor is an error
//! ([`MnemoError::NonFinite`], naming the file, tensor and element), and so is
//! a merged value that is not finite or overflows its output dtype (e.g. an
//! f16 result beyond ±65504). With [`MergeOptions::allow_nonfinite`] (or
//! [`Extra::allow_nonfinite`]) they propagate with IEEE semantics instead, as
//! in torch; selections then order NaN above every magnitude.

mod dare;
mod driver;
mod kernel;
mod methods;
pub use methods::config_methods;
pub mod recipe;
mod select;
mod stream;
pub mod yaml;

pub use dare::{dare_keep_mask, DARE_BLOCK};
pub use driver::{
    common_tensors, merge_checkpoints, MergeOptions, MergeReport, TensorReport, BATCH_ELEMENTS,
};
pub use kernel::TensorStats;
pub use recipe::{run_config, RecipeOptions, RecipeReport};
pub use stream::{plan_layout, write_header, LayoutEntry};
pub use yaml::MergeConfig;

use crate::error::{MnemoError, Result};
use serde::{Deserialize, Serialize};

/// How DARE rescales the task-vector entries it keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DareRescale {
    /// Divide the kept entries by the density d, as in the paper (Yu et al. 2024,
    /// "Language Models are Super Mario"): the expectation of each entry is kept.
    #[default]
    Paper,
    /// Scale the kept entries so that the task vector's L1 norm equals the
    /// original one, ‖δ‖₁/‖m⊙δ‖₁ (mergekit's `rescale: true`; no rescaling when
    /// either norm is below 1e-7).
    L1,
    /// Do not rescale (mergekit's `rescale: false`).
    None,
}

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn fisher_eps() -> f64 {
    1e-8
}
fn breadcrumbs_gamma() -> f64 {
    0.01
}

/// A merge method and its parameters.
///
/// `weights` are per input (in input order); an empty list means every weight is 1.
/// Parameters are f64 so that counts such as ⌊d·n⌋ are computed exactly as
/// mergekit (Python floats) computes them. Serialised with serde as an
/// internally tagged object, e.g. `{"method": "ties", "density": 0.3, "weights": [1, 0.5]}`;
/// omitted fields take the defaults documented on each field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Method {
    /// θ = Σ wᵢθᵢ, or Σ wᵢθᵢ / Σ wᵢ with `normalize` (Wortsman et al. 2022, model soups).
    /// mergekit normalises by default; we do only when asked. No base.
    Linear {
        #[serde(default)]
        weights: Vec<f64>,
        #[serde(default)]
        normalize: bool,
    },
    /// θ = D·θ₁ + (1−D)·θ₂: one exponential-moving-average step, θ₁ the average
    /// (target/teacher) model, θ₂ the online model. Exactly two inputs, no base.
    Ema { decay: f64 },
    /// Fisher merging (Matena & Raffel 2022): θ = Σ cᵢF̃ᵢθᵢ / (Σ cᵢF̃ᵢ + eps), with
    /// F̃ᵢ = max(Fᵢ, floor) when `floor` is set (else Fᵢ), cᵢ = wᵢ, or cᵢ = wᵢ/‖Fᵢ‖₂
    /// with `normalize`, ‖Fᵢ‖₂ the L2 norm of Fisher file i over all its tensors
    /// (as in the paper's code; the floor does not enter the norm). One Fisher
    /// file per input. Tensors that no Fisher file holds (batchnorm running
    /// statistics) get the weighted average Σ wᵢθᵢ / Σ wᵢ. Where every Fᵢ is 0
    /// and there is no floor the result is 0: set a floor (the paper uses 1e-6)
    /// to fall back to the weighted average there instead. No base.
    Fisher {
        #[serde(default)]
        weights: Vec<f64>,
        /// Added to the denominator; default 1e-8.
        #[serde(default = "fisher_eps")]
        eps: f64,
        /// Lower bound applied to every Fisher value; default none.
        #[serde(default)]
        floor: Option<f64>,
        /// Divide each Fisher by its global L2 norm; default false.
        #[serde(default)]
        normalize: bool,
    },
    /// Task arithmetic (Ilharco et al. 2023): θ = base + λ·Σ wᵢδᵢ, δᵢ = θᵢ − base;
    /// with `normalize` the sum is divided by Σ wᵢ (|Σ wᵢ| < 1e-8 → 1). Needs a base.
    TaskArithmetic {
        #[serde(default)]
        weights: Vec<f64>,
        /// λ, default 1.
        #[serde(default = "one")]
        lambda: f64,
        /// Default false (as mergekit).
        #[serde(default)]
        normalize: bool,
    },
    /// TIES (Yadav et al. 2023). Per tensor and input: keep the k = max(1, ⌊d·n⌋)
    /// largest |δᵢ| (n elements; ties broken by lower index first; d ≥ 1 keeps all,
    /// d = 0 none); eᵢ = wᵢδ̂ᵢ; elected sign s = sign(Σ eᵢ) with Σ ≥ 0 → +;
    /// agreeing entries: eᵢ ≠ 0 with sign s; mixed = Σ_agree eᵢ / Σ_agree wᵢ
    /// (a zero divisor → 1; without `normalize` no division); θ = base + λ·mixed.
    Ties {
        #[serde(default)]
        weights: Vec<f64>,
        /// d, the fraction of each task vector kept.
        density: f64,
        #[serde(default = "one")]
        lambda: f64,
        /// Divide by the agreeing weights; default true (as mergekit).
        #[serde(default = "yes")]
        normalize: bool,
    },
    /// DARE (Yu et al. 2024): each δᵢ entry is kept with probability d and the kept
    /// entries rescaled (`rescale`, default ×1/d as the paper; mergekit's L1 rule
    /// as an option), then combined as task arithmetic (`ties: false`, mergekit's
    /// `dare_linear`) or with TIES's sign election (`ties: true`, `dare_ties`).
    /// d ≥ 1 keeps everything unscaled. The mask is drawn from [`crate::rng::Rng`]
    /// streams derived from (`seed`, tensor name, input index, block of
    /// [`DARE_BLOCK`] elements): see [`dare_keep_mask`]. It does not depend on
    /// tensor order or thread count, but it is not torch's mask.
    Dare {
        #[serde(default)]
        weights: Vec<f64>,
        density: f64,
        #[serde(default = "one")]
        lambda: f64,
        /// Divide by Σ wᵢ (linear) or the agreeing weights (TIES); default false (as mergekit).
        #[serde(default)]
        normalize: bool,
        #[serde(default)]
        rescale: DareRescale,
        #[serde(default)]
        seed: u64,
        /// Elect signs as TIES does; default false.
        #[serde(default)]
        ties: bool,
    },
    /// Model breadcrumbs (Davari & Belilovsky 2023), as mergekit's
    /// `magnitude_outliers`: per tensor and input with n elements, sort |δᵢ|
    /// ascending (ties by index), keep ranks [b, b + ⌊d·n⌋) where
    /// b = max(0, n − ⌊d·n⌋ − ⌊γ·n⌋): the ⌊γ·n⌋ largest are dropped as outliers
    /// (fewer when d + γ > 1, so that ⌊d·n⌋ remain), the smallest are dropped so
    /// that ⌊d·n⌋ remain. d ≥ 1 keeps everything. Then task arithmetic
    /// (`ties: false`) or TIES's sign election (`ties: true`, `breadcrumbs_ties`).
    Breadcrumbs {
        #[serde(default)]
        weights: Vec<f64>,
        density: f64,
        /// γ, the fraction of largest magnitudes dropped; default 0.01.
        #[serde(default = "breadcrumbs_gamma")]
        gamma: f64,
        #[serde(default = "one")]
        lambda: f64,
        /// Default false (as mergekit).
        #[serde(default)]
        normalize: bool,
        #[serde(default)]
        ties: bool,
    },
    /// Spherical interpolation of two inputs, each tensor flattened: a, b normalised
    /// (norms ≤ 1e-8 count as 1), dot = â·b̂ clamped to [−1, 1]; |dot| > 0.9995 →
    /// (1−t)·a + t·b; else Ω = acos(dot), θ = sin((1−t)Ω)/sinΩ·a + sin(tΩ)/sinΩ·b.
    /// t = 0 gives the first input. No base (mergekit's base is our first input).
    Slerp { t: f64 },
    /// Model Stock (Jang et al. 2024), as mergekit with `filter_wise: false`: per
    /// tensor, offsets δᵢ = θᵢ − base (k ≥ 2 inputs); cos = mean over pairs i<j of
    /// δᵢ·δⱼ / max(‖δᵢ‖‖δⱼ‖, 1e-6), clamped to [−1, 1];
    /// t = k·cos / (1 + (k−1)·cos) (t = 0 when |1 + (k−1)·cos| < 1e-6);
    /// θ = t·mean(θᵢ) + (1−t)·base. Needs a base.
    ModelStock,
    /// θ = Σ θᵢ: adds tensors, e.g. Fisher files of disjoint data. No base.
    Sum,
}

/// One line per method, for help texts: (name, formula).
pub const METHODS: &[(&str, &str)] = &[
    ("linear", "Σ wᵢθᵢ (÷ Σ wᵢ with normalize)"),
    (
        "ema",
        "D·θ₁ + (1−D)·θ₂ (θ₁ the average, θ₂ the online model)",
    ),
    (
        "fisher",
        "Σ cᵢFᵢθᵢ / (Σ cᵢFᵢ + eps), cᵢ = wᵢ (÷ ‖Fᵢ‖ with normalize), F floored",
    ),
    ("task_arithmetic", "base + λ·Σ wᵢ(θᵢ − base)"),
    (
        "ties",
        "base + λ·(Σ agreeing wᵢδ̂ᵢ / Σ agreeing wᵢ), δ̂ᵢ = top ⌊d·n⌋ |δᵢ|, sign of Σ wᵢδ̂ᵢ elected",
    ),
    (
        "dare",
        "base + λ·Σ wᵢ(mᵢ⊙δᵢ)/d, mᵢ ~ Bernoulli(d) (or TIES sign election)",
    ),
    (
        "breadcrumbs",
        "base + λ·Σ wᵢδᵢ with the smallest and the ⌊γ·n⌋ largest |δᵢ| dropped, ⌊d·n⌋ kept",
    ),
    (
        "slerp",
        "sin((1−t)Ω)/sinΩ·θ₁ + sin(tΩ)/sinΩ·θ₂, lerp when |cos Ω| > 0.9995",
    ),
    (
        "model_stock",
        "t·mean(θᵢ) + (1−t)·base, t = k·cos/(1+(k−1)·cos)",
    ),
    ("sum", "Σ θᵢ"),
];

/// How task vectors are thinned before they are combined.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Sparsify {
    None,
    /// TIES: the k = max(1, ⌊d·n⌋) largest magnitudes.
    Magnitude {
        density: f64,
    },
    /// DARE: Bernoulli(d) per entry.
    Random {
        density: f64,
        rescale: DareRescale,
        seed: u64,
    },
    /// Breadcrumbs: drop the smallest and the largest magnitudes.
    Outliers {
        density: f64,
        gamma: f64,
    },
}

/// The methods as the kernel sees them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Plan {
    Linear {
        weights: Vec<f64>,
        normalize: bool,
    },
    Fisher {
        weights: Vec<f64>,
        eps: f64,
        floor: Option<f64>,
        normalize: bool,
    },
    /// mergekit's "generalized task arithmetic": task arithmetic, TIES, DARE, breadcrumbs.
    TaskVectors {
        weights: Vec<f64>,
        lambda: f64,
        normalize: bool,
        /// One per input (a YAML configuration may give each model its own density).
        sparsify: Vec<Sparsify>,
        elect_sign: bool,
    },
    Slerp {
        t: f64,
    },
    ModelStock,
}

impl Method {
    /// The method's name, as in its serde tag.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Linear { .. } => "linear",
            Method::Ema { .. } => "ema",
            Method::Fisher { .. } => "fisher",
            Method::TaskArithmetic { .. } => "task_arithmetic",
            Method::Ties { .. } => "ties",
            Method::Dare { .. } => "dare",
            Method::Breadcrumbs { .. } => "breadcrumbs",
            Method::Slerp { .. } => "slerp",
            Method::ModelStock => "model_stock",
            Method::Sum => "sum",
        }
    }

    /// Whether the method needs a base model (and refuses to run without one).
    pub fn needs_base(&self) -> bool {
        matches!(
            self,
            Method::TaskArithmetic { .. }
                | Method::Ties { .. }
                | Method::Dare { .. }
                | Method::Breadcrumbs { .. }
                | Method::ModelStock
        )
    }

    /// Whether the method takes one Fisher file per input.
    pub fn needs_fishers(&self) -> bool {
        matches!(self, Method::Fisher { .. })
    }

    fn invalid(&self, reason: impl Into<String>) -> MnemoError {
        MnemoError::InvalidMerge {
            method: self.name().to_string(),
            reason: reason.into(),
        }
    }

    /// Checks the parameters against `inputs` models, the presence of a base and
    /// the number of Fisher files: counts, ranges, finiteness.
    pub fn validate(&self, inputs: usize, has_base: bool, fishers: usize) -> Result<()> {
        if inputs == 0 {
            return Err(self.invalid("needs at least one input model"));
        }
        if self.needs_base() && !has_base {
            return Err(self.invalid("needs a base model (task vectors are θᵢ − base)"));
        }
        if !self.needs_base() && has_base {
            return Err(self.invalid("does not use a base model"));
        }
        if self.needs_fishers() {
            if fishers != inputs {
                return Err(self.invalid(format!(
                    "needs one Fisher file per input model: {inputs} models, {fishers} Fisher files"
                )));
            }
        } else if fishers != 0 {
            return Err(self.invalid("does not use Fisher files"));
        }
        let finite = |what: &str, v: f64| -> Result<()> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(self.invalid(format!("{what} must be finite, not {v}")))
            }
        };
        let unit = |what: &str, v: f64| -> Result<()> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(self.invalid(format!("{what} must be in [0, 1], not {v}")))
            }
        };
        let weights = |w: &[f64]| -> Result<()> {
            if !w.is_empty() && w.len() != inputs {
                return Err(self.invalid(format!(
                    "{} weights for {inputs} input models (give one per model, or none for all 1)",
                    w.len()
                )));
            }
            w.iter().try_for_each(|&v| finite("every weight", v))
        };
        match self {
            Method::Linear {
                weights: w,
                normalize,
            } => {
                weights(w)?;
                if *normalize && resolve_weights(w, inputs).iter().sum::<f64>() == 0.0 {
                    return Err(
                        self.invalid("normalize divides by the sum of the weights, which is 0")
                    );
                }
            }
            Method::Ema { decay } => {
                if inputs != 2 {
                    return Err(self.invalid(format!(
                        "takes exactly two inputs (the average, then the online model), not {inputs}"
                    )));
                }
                unit("decay", *decay)?;
            }
            Method::Fisher {
                weights: w,
                eps,
                floor,
                ..
            } => {
                weights(w)?;
                if !(eps.is_finite() && *eps >= 0.0) {
                    return Err(self.invalid(format!("eps must be ≥ 0, not {eps}")));
                }
                if let Some(f) = floor {
                    if !(f.is_finite() && *f >= 0.0) {
                        return Err(self.invalid(format!("floor must be ≥ 0, not {f}")));
                    }
                }
            }
            Method::TaskArithmetic {
                weights: w, lambda, ..
            } => {
                weights(w)?;
                finite("lambda", *lambda)?;
            }
            Method::Ties {
                weights: w,
                density,
                lambda,
                ..
            }
            | Method::Dare {
                weights: w,
                density,
                lambda,
                ..
            } => {
                weights(w)?;
                unit("density", *density)?;
                finite("lambda", *lambda)?;
            }
            Method::Breadcrumbs {
                weights: w,
                density,
                gamma,
                lambda,
                ..
            } => {
                weights(w)?;
                unit("density", *density)?;
                unit("gamma", *gamma)?;
                finite("lambda", *lambda)?;
            }
            Method::Slerp { t } => {
                if inputs != 2 {
                    return Err(self.invalid(format!("takes exactly two inputs, not {inputs}")));
                }
                finite("t", *t)?;
            }
            Method::ModelStock => {
                if inputs < 2 {
                    return Err(self.invalid(format!(
                        "needs at least two fine-tuned inputs besides the base, not {inputs}"
                    )));
                }
            }
            Method::Sum => {}
        }
        Ok(())
    }

    /// The kernel's view of the method (after `validate`).
    pub(crate) fn plan(&self, inputs: usize) -> Plan {
        let w = |w: &[f64]| resolve_weights(w, inputs);
        match self {
            Method::Linear { weights, normalize } => Plan::Linear {
                weights: w(weights),
                normalize: *normalize,
            },
            Method::Ema { decay } => Plan::Linear {
                weights: vec![*decay, 1.0 - *decay],
                normalize: false,
            },
            Method::Sum => Plan::Linear {
                weights: vec![1.0; inputs],
                normalize: false,
            },
            Method::Fisher {
                weights,
                eps,
                floor,
                normalize,
            } => Plan::Fisher {
                weights: w(weights),
                eps: *eps,
                floor: *floor,
                normalize: *normalize,
            },
            Method::TaskArithmetic {
                weights,
                lambda,
                normalize,
            } => Plan::TaskVectors {
                weights: w(weights),
                lambda: *lambda,
                normalize: *normalize,
                sparsify: vec![Sparsify::None; inputs],
                elect_sign: false,
            },
            Method::Ties {
                weights,
                density,
                lambda,
                normalize,
            } => Plan::TaskVectors {
                weights: w(weights),
                lambda: *lambda,
                normalize: *normalize,
                sparsify: vec![Sparsify::Magnitude { density: *density }; inputs],
                elect_sign: true,
            },
            Method::Dare {
                weights,
                density,
                lambda,
                normalize,
                rescale,
                seed,
                ties,
            } => Plan::TaskVectors {
                weights: w(weights),
                lambda: *lambda,
                normalize: *normalize,
                sparsify: vec![
                    Sparsify::Random {
                        density: *density,
                        rescale: *rescale,
                        seed: *seed,
                    };
                    inputs
                ],
                elect_sign: *ties,
            },
            Method::Breadcrumbs {
                weights,
                density,
                gamma,
                lambda,
                normalize,
                ties,
            } => Plan::TaskVectors {
                weights: w(weights),
                lambda: *lambda,
                normalize: *normalize,
                sparsify: vec![
                    Sparsify::Outliers {
                        density: *density,
                        gamma: *gamma,
                    };
                    inputs
                ],
                elect_sign: *ties,
            },
            Method::Slerp { t } => Plan::Slerp { t: *t },
            Method::ModelStock => Plan::ModelStock,
        }
    }
}

fn resolve_weights(w: &[f64], inputs: usize) -> Vec<f64> {
    if w.is_empty() {
        vec![1.0; inputs]
    } else {
        w.to_vec()
    }
}

/// What some methods need beyond the input tensors, for [`merge_tensor`].
#[derive(Clone, Debug, Default)]
pub struct Extra<'a> {
    /// Fisher merging: this tensor's Fisher diagonal for each input (all or none;
    /// none → the weighted average).
    pub fishers: Vec<&'a [f32]>,
    /// Fisher merging with `normalize`: the global L2 norm of each input's Fisher
    /// file (over all its tensors), as [`merge_checkpoints`] computes it.
    pub fisher_norms: Vec<f64>,
    /// Let NaN/inf through instead of failing (see the module documentation).
    pub allow_nonfinite: bool,
}

/// Merges one tensor held in memory: `inputs` (same length each), `base` for
/// the methods that need one, `extra` for Fisher merging. `name` seeds DARE's
/// mask stream. The result has the inputs' length, in f32. Errors name the
/// inputs as `input #i`, `base` and `fisher #i`.
pub fn merge_tensor(
    method: &Method,
    name: &str,
    inputs: &[&[f32]],
    base: Option<&[f32]>,
    extra: &Extra,
) -> Result<Vec<f32>> {
    merge_tensor_stats(method, name, inputs, base, extra).map(|(v, _)| v)
}

/// [`merge_tensor`], also returning the per-tensor statistics the driver reports.
pub fn merge_tensor_stats(
    method: &Method,
    name: &str,
    inputs: &[&[f32]],
    base: Option<&[f32]>,
    extra: &Extra,
) -> Result<(Vec<f32>, TensorStats)> {
    // A Fisher merge without Fisher tensors is the weighted average (as for the
    // tensors a Fisher file lacks); with them, one per input.
    let fishers = extra.fishers.len();
    let counted = if method.needs_fishers() && fishers == 0 {
        inputs.len()
    } else {
        fishers
    };
    method.validate(inputs.len(), base.is_some(), counted)?;
    let len = inputs[0].len();
    let pseudo = |i: usize, what: &str| std::path::PathBuf::from(format!("{what} #{i}"));
    let shape_err = |path: std::path::PathBuf, found: usize| MnemoError::ShapeMismatch {
        path,
        tensor: name.to_string(),
        found: vec![found],
        expected: vec![len],
    };
    for (i, x) in inputs.iter().enumerate() {
        if x.len() != len {
            return Err(shape_err(pseudo(i, "input"), x.len()));
        }
    }
    if let Some(b) = base {
        if b.len() != len {
            return Err(shape_err("base".into(), b.len()));
        }
    }
    for (i, f) in extra.fishers.iter().enumerate() {
        if f.len() != len {
            return Err(shape_err(pseudo(i, "fisher"), f.len()));
        }
    }
    if matches!(method, Method::Ties { .. } | Method::Breadcrumbs { .. }) && len > select::MAX_LEN {
        return Err(method.invalid(format!(
            "tensor '{name}' has {len} elements; magnitude selection handles at most 2^32"
        )));
    }
    let plan = method.plan(inputs.len());
    let fisher_norms = match &plan {
        Plan::Fisher {
            normalize: true, ..
        } if fishers > 0 => {
            if extra.fisher_norms.len() != inputs.len() {
                return Err(method.invalid(
                    "normalize needs the global L2 norm of each Fisher file (Extra::fisher_norms)",
                ));
            }
            extra.fisher_norms.clone()
        }
        _ => vec![1.0; inputs.len()],
    };
    let job = kernel::Job {
        name,
        len,
        inputs: inputs.iter().map(|x| kernel::Src::F32(x)).collect(),
        base: base.map(kernel::Src::F32),
        fishers: extra.fishers.iter().map(|x| kernel::Src::F32(x)).collect(),
        fisher_norms,
        check_finite: !extra.allow_nonfinite,
    };
    let mut out = vec![0f32; len];
    let stats = kernel::run(&plan, &job, kernel::Sink::F32(&mut out)).map_err(|e| {
        let path = match e.which {
            kernel::Which::Input(i) => pseudo(i, "input"),
            kernel::Which::Base => "base".into(),
            kernel::Which::Fisher(i) => pseudo(i, "fisher"),
            kernel::Which::Output => "merged output".into(),
        };
        e.into_error(path, name)
    })?;
    Ok((out, stats))
}

#[cfg(test)]
mod tests;
