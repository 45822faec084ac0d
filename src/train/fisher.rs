//! Diagonal Fisher information, exactly, in three modes. For models whose
//! trainable layers are all linear, per-example gradients are never formed:
//! the per-example weight gradient is δ_i ⊗ a_i, so Σ_i g_i² = (δ²)ᵀ·(a²), one
//! matmul per layer per batch. Dense chains on the CPU run this on host
//! buffers (`DenseNet::backward_squared`); other linear-only models read δ
//! from zero probes on candle's pre-activations. Other layer types fall back
//! to a per-example loop.

use super::dense::DenseNet;
use crate::checkpoint::{Checkpoint, OwnedTensor};
use crate::data::{Dataset, TargetKind};
use crate::error::{MnemoError, Result};
use crate::loss::softmax_rows;
use crate::loss::{loss_grad, Loss};
use crate::model::{ArchSpec, Layer, Mode, Model, Taps};
use crate::rng::Rng;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Logits as a host vector, checked to be [n, classes].
pub(crate) fn host_logits(
    logits: &Tensor,
    data: &Dataset,
    head: Option<&str>,
    check: bool,
) -> Result<(Vec<f32>, usize)> {
    let dims = logits.dims().to_vec();
    if dims.len() != 2 {
        return Err(MnemoError::InvalidArch {
            origin: None,
            reason: format!("the model's output has shape {dims:?}; classification needs [batch, classes] logits"),
        });
    }
    if check {
        data.check_labels(dims[1], head)?;
    }
    let v = logits
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(MnemoError::compute("reading logits"))?;
    Ok((v, dims[1]))
}

/// How the expectation over labels is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FisherMode {
    /// Mean over examples of the squared per-example gradient at the true label.
    Empirical,
    /// Exact expectation over the model's predictive distribution: Σ_y p(y|x)·g_y².
    True,
    /// The common reference code's estimator: Σ_batches (mean-batch gradient)² / N (biased).
    Batch,
    /// The squared per-example gradient at the model's own most likely label (argmax), as
    /// van de Ven & Tolias's continual-learning code estimates it: a one-sample stand-in for
    /// `True`.
    Predicted,
    /// Memory Aware Synapses (Aljundi et al. 2018): the mean over examples of
    /// |∂‖f(x)‖²₂/∂θ|, the sensitivity of the output's squared norm; no labels used.
    Mas,
}

impl FisherMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FisherMode::Empirical => "empirical",
            FisherMode::True => "true",
            FisherMode::Batch => "batch",
            FisherMode::Predicted => "predicted",
            FisherMode::Mas => "mas",
        }
    }
}

/// A diagonal Fisher: one tensor per trainable parameter, and the example count.
pub struct FisherDiag {
    pub values: BTreeMap<String, Tensor>,
    pub samples: usize,
}

/// True when the model is a flat list of layers (no module tree, no containers) whose
/// layers holding parameters are all linear: the fast path and the per-layer probes apply.
fn linear_only(spec: &ArchSpec) -> bool {
    let roots = spec.roots();
    !matches!(spec, ArchSpec::Tree(_))
        && roots.iter().all(|(_, l)| {
            matches!(l, Layer::Linear { .. }) || (!l.is_container() && l.own_params().is_empty())
        })
}

/// Output-gradient weightings G [n, c] (rows: dℓ/dlogits per example) for one Fisher pass each.
fn weightings(mode: FisherMode, p: &[f64], targets: &[i64], c: usize) -> Vec<Vec<f32>> {
    let n = targets.len();
    let row = |i: usize, y: usize, scale: f64, out: &mut Vec<f32>| {
        for k in 0..c {
            let e = if k == y { 1.0 } else { 0.0 };
            out[i * c + k] = (scale * (p[i * c + k] - e)) as f32;
        }
    };
    match mode {
        FisherMode::Empirical => {
            let mut g = vec![0f32; n * c];
            for (i, &t) in targets.iter().enumerate() {
                row(i, t as usize, 1.0, &mut g);
            }
            vec![g]
        }
        // Σ_y p_y g_y² = Σ_y (√p_y · g_y)²: one pass per class with rows scaled by √p.
        FisherMode::True => (0..c)
            .map(|y| {
                let mut g = vec![0f32; n * c];
                for i in 0..n {
                    row(i, y, p[i * c + y].sqrt(), &mut g);
                }
                g
            })
            .collect(),
        FisherMode::Predicted => {
            let mut g = vec![0f32; n * c];
            for i in 0..n {
                let row_p = &p[i * c..(i + 1) * c];
                // The first maximum, as torch's argmax.
                let y = (0..c).fold(0, |b, k| if row_p[k] > row_p[b] { k } else { b });
                row(i, y, 1.0, &mut g);
            }
            vec![g]
        }
        FisherMode::Batch => unreachable!("batch mode squares batch gradients"),
        FisherMode::Mas => unreachable!("MAS has its own loop"),
    }
}

fn add(acc: &mut BTreeMap<String, Tensor>, name: &str, t: Tensor) -> Result<()> {
    let v = match acc.remove(name) {
        Some(a) => (a + t).map_err(MnemoError::compute("accumulating the Fisher"))?,
        None => t,
    };
    acc.insert(name.to_string(), v);
    Ok(())
}

/// Computes the diagonal Fisher of `model` on the first `samples` examples of `data` (all
/// when None), for the task loss `loss`. Cross-entropy on class ids takes the fast paths and
/// every mode; other losses and targets (masks, multi-hot rows) take a per-example loop over
/// the loss's own gradient, in `Empirical` or `Batch` mode.
#[allow(clippy::too_many_arguments)]
pub fn fisher(
    model: &mut Model,
    data: &Dataset,
    mode: FisherMode,
    loss: Loss,
    samples: Option<usize>,
    batch_size: usize,
    head: Option<&str>,
    mut progress: impl FnMut(usize),
) -> Result<FisherDiag> {
    let n = samples.unwrap_or(data.len()).min(data.len());
    if n == 0 {
        return Err(MnemoError::InvalidDataset {
            path: data.path.clone(),
            reason: "no examples to compute a Fisher on".into(),
        });
    }
    let order: Vec<usize> = (0..n).collect();
    if mode == FisherMode::Mas {
        return mas(model, data, &order, head, progress);
    }
    loss.check_targets(data)?;
    if data.target_kind != TargetKind::Class || loss != Loss::Ce {
        return loss_fisher(model, data, mode, loss, &order, batch_size, head, progress);
    }
    if model.device.is_cpu() {
        if let Some(mut net) = DenseNet::plan(&model.spec, head)
            .filter(|net| net.in_features() == data.example_shape.iter().product::<usize>())
        {
            return dense_fisher(
                &mut net, model, data, mode, &order, batch_size, head, progress,
            );
        }
    }
    let device = model.device.clone();
    let fast = linear_only(&model.spec) && mode != FisherMode::Batch;
    let mut acc: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut rng = Rng::new(0); // eval mode: no dropout draws
    let bs = if fast || mode == FisherMode::Batch {
        batch_size.max(1)
    } else {
        1
    };
    for (bi, idx) in order.chunks(bs).enumerate() {
        let (x, y) = data.batch(idx, &device)?;
        let mut taps = Taps::default();
        let logits =
            model.forward_tapped(&x, head, Mode::Eval, &mut rng, fast.then_some(&mut taps))?;
        let (l, c) = host_logits(&logits, data, head, bi == 0)?;
        let (p, _) = softmax_rows(&l, c);
        let passes = if mode == FisherMode::Batch {
            let b = idx.len() as f64;
            let mut g = vec![0f32; l.len()];
            for (i, &t) in y.iter().enumerate() {
                for k in 0..c {
                    let e = if k == t as usize { 1.0 } else { 0.0 };
                    g[i * c + k] = ((p[i * c + k] - e) / b) as f32;
                }
            }
            vec![g]
        } else {
            weightings(mode, &p, &y, c)
        };
        for g in passes {
            let gt = Tensor::from_vec(g, (idx.len(), c), &device)
                .map_err(MnemoError::compute("Fisher pass"))?;
            let grads = (&logits * gt)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .map_err(MnemoError::compute("Fisher backward pass"))?;
            if fast {
                for (layer, (input, probe)) in &taps.linear {
                    let delta =
                        grads
                            .get(probe.as_tensor())
                            .ok_or_else(|| MnemoError::Compute {
                                context: format!("no gradient reached layer {layer}"),
                                source: candle_core::Error::Msg("probe gradient missing".into()),
                            })?;
                    let d2 = delta.sqr().map_err(MnemoError::compute("Fisher"))?;
                    let a2 = input.sqr().map_err(MnemoError::compute("Fisher"))?;
                    let fw = d2
                        .t()
                        .and_then(|t| t.matmul(&a2))
                        .map_err(MnemoError::compute("Fisher matmul"))?;
                    add(&mut acc, &format!("{layer}.weight"), fw)?;
                    if model.params.contains_key(&format!("{layer}.bias")) {
                        add(
                            &mut acc,
                            &format!("{layer}.bias"),
                            d2.sum(0).map_err(MnemoError::compute("Fisher"))?,
                        )?;
                    }
                }
            } else {
                for (name, var) in &model.params {
                    let g = match grads.get(var.as_tensor()) {
                        Some(g) => g.sqr().map_err(MnemoError::compute("Fisher"))?,
                        None => var
                            .as_tensor()
                            .zeros_like()
                            .map_err(MnemoError::compute("Fisher"))?,
                    };
                    add(&mut acc, name, g)?;
                }
            }
        }
        progress(idx.len());
    }
    mean_over(acc, model, n)
}

/// MAS importance: per example, the gradient of the squared L2 norm of the model's output
/// (its gradient at the output is 2·f(x)) pushed back through the model in eval mode, in
/// absolute value, averaged over the examples. Any output shape; no labels.
fn mas(
    model: &mut Model,
    data: &Dataset,
    order: &[usize],
    head: Option<&str>,
    mut progress: impl FnMut(usize),
) -> Result<FisherDiag> {
    let device = model.device.clone();
    let mut acc: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut rng = Rng::new(0); // eval mode: no dropout draws
    for &i in order {
        let (x, _) = data.batch(&[i], &device)?;
        let out = model.forward(&x, head, Mode::Eval, &mut rng)?;
        let grads = out
            .sqr()
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .map_err(MnemoError::compute("MAS backward pass"))?;
        for (name, var) in &model.params {
            if let Some(g) = grads.get(var.as_tensor()) {
                add(&mut acc, name, g.abs().map_err(MnemoError::compute("MAS"))?)?;
            }
        }
        progress(1);
    }
    mean_over(acc, model, order.len())
}

/// The Fisher from sums of squared gradients over `n` examples: every trainable parameter,
/// zeros where no gradient reached it.
fn mean_over(mut acc: BTreeMap<String, Tensor>, model: &Model, n: usize) -> Result<FisherDiag> {
    let scale = 1.0 / n as f64;
    let mut values = BTreeMap::new();
    for (name, var) in &model.params {
        let t = match acc.remove(name) {
            Some(t) => (t * scale).map_err(MnemoError::compute("Fisher"))?,
            None => var
                .as_tensor()
                .zeros_like()
                .map_err(MnemoError::compute("Fisher"))?,
        };
        values.insert(name.clone(), t);
    }
    Ok(FisherDiag { values, samples: n })
}

/// The Fisher of any task loss: per example (or, in `Batch` mode, per mini-batch) the
/// loss's gradient with respect to the logits (`loss_grad`, as training computes it) is
/// pushed back through the model and the parameter gradients are squared. The expectation
/// over the model's own predictions (`True`, `Predicted`) is defined here for softmax
/// cross-entropy on class ids only.
#[allow(clippy::too_many_arguments)]
fn loss_fisher(
    model: &mut Model,
    data: &Dataset,
    mode: FisherMode,
    loss: Loss,
    order: &[usize],
    batch_size: usize,
    head: Option<&str>,
    mut progress: impl FnMut(usize),
) -> Result<FisherDiag> {
    if !matches!(mode, FisherMode::Empirical | FisherMode::Batch) {
        return Err(MnemoError::Unfit {
            path: data.path.clone(),
            setting: crate::Setting::FisherMode,
            reason: format!(
                "the {} Fisher needs class ids [N] and the ce loss; with the {} loss on {} use the empirical or batch Fisher",
                mode.as_str(),
                loss.name(),
                data.target_kind.describe()
            ),
        });
    }
    let device = model.device.clone();
    let bs = if mode == FisherMode::Batch {
        batch_size.max(1)
    } else {
        1
    };
    let mut acc: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut rng = Rng::new(0); // eval mode: no dropout draws
    for (bi, idx) in order.chunks(bs).enumerate() {
        let (x, y) = data.batch(idx, &device)?;
        let logits = model.forward(&x, head, Mode::Eval, &mut rng)?;
        let dims = logits.dims().to_vec();
        if bi == 0 {
            loss.check_output(data, &dims, head, true)?;
        }
        let l: Vec<f32> = logits
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(MnemoError::compute("reading logits"))?;
        // The gradient of the batch's mean loss: per example when bs = 1.
        let (_, g) = loss_grad(loss, data.target_kind, &l, &dims, &y, 0.0, 1.0);
        let gt = Tensor::from_vec(g, dims.as_slice(), &device)
            .map_err(MnemoError::compute("Fisher pass"))?;
        let grads = (&logits * gt)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .map_err(MnemoError::compute("Fisher backward pass"))?;
        for (name, var) in &model.params {
            if let Some(g) = grads.get(var.as_tensor()) {
                add(
                    &mut acc,
                    name,
                    g.sqr().map_err(MnemoError::compute("Fisher"))?,
                )?;
            }
        }
        progress(idx.len());
    }
    mean_over(acc, model, order.len())
}

/// `fisher` for dense networks, on host buffers (see `DenseNet::backward_squared`).
#[allow(clippy::too_many_arguments)]
fn dense_fisher(
    net: &mut DenseNet,
    model: &Model,
    data: &Dataset,
    mode: FisherMode,
    order: &[usize],
    batch_size: usize,
    head: Option<&str>,
    mut progress: impl FnMut(usize),
) -> Result<FisherDiag> {
    let mut weights = BTreeMap::new();
    for (name, var) in &model.params {
        let v: Vec<f32> = var
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(MnemoError::compute("reading weights"))?;
        weights.insert(name.clone(), v);
    }
    let c = net.classes();
    data.check_labels(c, head)?;
    let mut sums: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut batch_grad: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for idx in order.chunks(batch_size.max(1)) {
        let logits = net.forward(&weights, &data.inputs, idx).to_vec();
        let y: Vec<i64> = idx.iter().map(|&i| data.targets[i]).collect();
        let (p, _) = softmax_rows(&logits, c);
        if mode == FisherMode::Batch {
            // (mean batch gradient)², summed over batches.
            let b = idx.len() as f64;
            let mut g = weightings(FisherMode::Empirical, &p, &y, c).remove(0);
            g.iter_mut().for_each(|v| *v = (*v as f64 / b) as f32);
            batch_grad.values_mut().for_each(|v| v.fill(0.0));
            net.backward(&weights, &g, &mut batch_grad);
            for (name, g) in &batch_grad {
                let s = sums
                    .entry(name.clone())
                    .or_insert_with(|| vec![0.0; g.len()]);
                s.iter_mut().zip(g).for_each(|(s, g)| *s += g * g);
            }
        } else {
            for g in weightings(mode, &p, &y, c) {
                net.backward_squared(&weights, &g, &mut sums);
            }
        }
        progress(idx.len());
    }
    let scale = 1.0 / order.len() as f32;
    let mut values = BTreeMap::new();
    for (name, var) in &model.params {
        let shape = var.as_tensor().dims().to_vec();
        let v = match sums.remove(name) {
            Some(mut v) => {
                v.iter_mut().for_each(|x| *x *= scale);
                v
            }
            None => vec![0.0; shape.iter().product()],
        };
        let t = Tensor::from_vec(v, shape.as_slice(), &model.device)
            .map_err(MnemoError::compute("Fisher"))?;
        values.insert(name.clone(), t);
    }
    Ok(FisherDiag {
        values,
        samples: order.len(),
    })
}

/// Metadata keys of a Fisher file.
pub const MODE_KEY: &str = "mnemo.fisher.mode";
pub const SAMPLES_KEY: &str = "mnemo.fisher.samples";
pub const MODEL_KEY: &str = "mnemo.fisher.model";
/// Set on a Fisher written with --accumulate: the decay γ used.
pub const ONLINE_KEY: &str = "mnemo.fisher.online_gamma";

fn fisher_error(f: &Checkpoint, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidSafetensors {
        path: f.path.clone(),
        reason: reason.into(),
    }
}

/// The example count a Fisher file records.
pub fn samples_of(f: &Checkpoint) -> Result<usize> {
    f.metadata()
        .get(SAMPLES_KEY)
        .and_then(|s| s.parse().ok())
        .filter(|&n: &usize| n > 0)
        .ok_or_else(|| {
            fisher_error(
                f,
                format!("no positive '{SAMPLES_KEY}' metadata: not a Fisher file written by mnemo fisher"),
            )
        })
}

/// The Fisher of the union of disjoint shards from the shards' Fisher files:
/// Σ nᵢFᵢ / Σ nᵢ, nᵢ from each file's sample count. The files must agree on mode and
/// model; tensors are combined one at a time (memory: two tensors). Returns the tensors
/// and the total sample count.
pub fn reduce(files: &[Checkpoint]) -> Result<(Vec<OwnedTensor<'static>>, usize)> {
    let Some(first) = files.first() else {
        return Ok((Vec::new(), 0));
    };
    let counts: Vec<usize> = files.iter().map(samples_of).collect::<Result<_>>()?;
    if let Some(f) = files.iter().find(|f| f.metadata().contains_key(ONLINE_KEY)) {
        return Err(fisher_error(
            f,
            "is an online (accumulated) Fisher, not a mean over its samples: reduce the \
             shards first, then accumulate",
        ));
    }
    for f in &files[1..] {
        for key in [MODE_KEY, MODEL_KEY] {
            let (a, b) = (first.metadata().get(key), f.metadata().get(key));
            if a != b {
                return Err(fisher_error(
                    f,
                    format!(
                        "'{key}' is {} but {} has {}: only Fisher files of the same model and mode combine",
                        b.map_or("missing", |s| s.as_str()),
                        first.path.display(),
                        a.map_or("missing", |s| s.as_str())
                    ),
                ));
            }
        }
        first.check_same_layout(f, None)?;
    }
    let total: usize = counts.iter().sum();
    let mut out = Vec::new();
    for name in first.names() {
        let mut acc = vec![0f64; first.entry(name)?.shape.iter().product()];
        for (f, &n) in files.iter().zip(&counts) {
            let w = n as f64 / total as f64;
            for (a, v) in acc.iter_mut().zip(f.to_f32(name)?) {
                *a += w * v as f64;
            }
        }
        let v: Vec<f32> = acc.into_iter().map(|x| x as f32).collect();
        out.push(OwnedTensor::f32(name, first.entry(name)?.shape.clone(), &v));
    }
    Ok((out, total))
}

/// Online EWC: F = γ·F_prev + F_new, in place on `new` (same names and shapes required).
pub fn accumulate(new: &mut FisherDiag, prev: &Checkpoint, gamma: f64) -> Result<()> {
    for (name, t) in new.values.iter_mut() {
        let e = prev.entry(name)?;
        if e.shape != t.dims() {
            return Err(MnemoError::ShapeMismatch {
                path: prev.path.clone(),
                tensor: name.clone(),
                found: e.shape.clone(),
                expected: t.dims().to_vec(),
            });
        }
        let p = Tensor::from_vec(prev.to_f32(name)?, t.dims(), t.device())
            .map_err(MnemoError::compute("reading the previous Fisher"))?;
        *t = ((p * gamma).and_then(|p| p + &*t))
            .map_err(MnemoError::compute("accumulating the Fisher"))?;
    }
    if let Some(extra) = prev.names().find(|n| !new.values.contains_key(*n)) {
        return Err(MnemoError::UnexpectedTensor {
            path: prev.path.clone(),
            tensor: extra.to_string(),
            count: prev
                .names()
                .filter(|n| !new.values.contains_key(*n))
                .count(),
        });
    }
    Ok(())
}
