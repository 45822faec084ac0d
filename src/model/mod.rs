//! Models built from arch specs: parameters as candle `Var`s named exactly as
//! torch names them, a forward pass in train or eval mode made only of ops
//! that have a backward (candle's fused norms and softmax do not), and
//! torch's default initialisation drawn from mnemo's own seeded RNG.

pub mod conv;
mod init;
mod partial;
pub mod spec;
pub mod zoo;

pub use partial::MatchReport;
pub use spec::{join, ArchSpec, Children, Layer, ParamKind, ParamSpec, UpsampleMode};

use crate::checkpoint::{Checkpoint, Dtype, OwnedTensor};
use crate::error::{MnemoError, Result};
use crate::lora::{a_name, b_name, Adapter, LoraConfig, ModuleAdapter, TargetKind};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var, D};
use std::borrow::Cow;
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
    /// A LoRA adapter being trained: `params` then holds only the adapter's weights.
    pub lora: Option<LoraAttachment>,
    /// The head a `heads` container runs: set by `forward` for the length of one pass.
    active_head: Option<String>,
}

/// A LoRA adapter attached to a model: the base model's weights are frozen and each
/// target module's output gains scale·B·A·dropout(x).
pub struct LoraAttachment {
    pub config: LoraConfig,
    pub modules: BTreeMap<String, TargetKind>,
    /// The base model's trainable weights, no longer trained.
    pub frozen: BTreeMap<String, Tensor>,
}

fn ce(ctx: &str) -> impl FnOnce(candle_core::Error) -> MnemoError + '_ {
    move |source| MnemoError::Compute {
        context: ctx.to_string(),
        source,
    }
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
                        reason: "a model's weights must be finite (`mnemo inspect --stats` counts NaN and inf per tensor)".into(),
                    });
                }
                values.insert(p.name.clone(), v);
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
        Self::from_values(spec, values, counters, device)
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
                    let t = Tensor::from_vec(v, p.shape.as_slice(), device)
                        .map_err(ce(&format!("placing tensor '{}' on {device:?}", p.name)))?;
                    if kind == ParamKind::Trainable {
                        params.insert(p.name, Var::from_tensor(&t).map_err(ce("creating var"))?);
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
            lora: None,
            active_head: None,
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

    /// Checks a `--head` choice against the spec; returns the head to use
    /// (the only head when there is one and none was named).
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
                "the model has several heads; choose one with --head ({})",
                heads.join(", ")
            ))),
            Some(h) if heads.is_empty() => Err(err(format!(
                "--head {h} given, but the model has a single output (no heads)"
            ))),
            Some(h) if heads.iter().any(|x| x == h) => Ok(Some(h.to_string())),
            Some(h) => Err(err(format!(
                "no head named '{h}'; the model's heads are: {}",
                heads.join(", ")
            ))),
        }
    }

    /// Runs the model. In train mode batchnorm uses batch statistics and updates its running
    /// statistics, and dropout draws its masks from `rng`.
    pub fn forward(
        &mut self,
        x: &Tensor,
        head: Option<&str>,
        mode: Mode,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        self.forward_tapped(x, head, mode, rng, None)
    }

    /// `forward`, optionally recording each linear layer's input and adding a zero probe
    /// `Var` to its output: the probe's gradient is dL/dz per example, which candle's
    /// GradStore would otherwise drop (it keeps only `Var` gradients).
    pub fn forward_tapped(
        &mut self,
        x: &Tensor,
        head: Option<&str>,
        mode: Mode,
        rng: &mut Rng,
        mut taps: Option<&mut Taps>,
    ) -> Result<Tensor> {
        let groups: Vec<(String, Vec<Layer>)> = match (&self.spec, head) {
            (ArchSpec::Sequential(l), _) => vec![(String::new(), l.clone())],
            // A module tree is one root layer, named ''.
            (ArchSpec::Tree(root), _) => {
                let root = root.clone();
                self.active_head = head.map(str::to_string);
                let y = self.layer_forward("", &root, x, mode, rng);
                self.active_head = None;
                return y;
            }
            (ArchSpec::MultiHead { trunk, heads }, Some(h)) => {
                let hl = heads.get(h).ok_or_else(|| MnemoError::InvalidArch {
                    origin: None,
                    reason: format!("no head named '{h}'"),
                })?;
                vec![
                    ("trunk.".into(), trunk.clone()),
                    (format!("heads.{h}."), hl.clone()),
                ]
            }
            (ArchSpec::MultiHead { .. }, None) => {
                return Err(MnemoError::InvalidArch {
                    origin: None,
                    reason: "a multi-head model needs --head".into(),
                })
            }
        };
        let mut x = x.clone();
        // An MLP on images: flatten before a leading linear layer, as users expect.
        if let Some(Layer::Linear { .. }) = groups[0].1.first() {
            if x.rank() > 2 {
                x = x.flatten_from(1).map_err(ce("flattening the input"))?;
            }
        }
        for (prefix, layers) in &groups {
            for (i, layer) in layers.iter().enumerate() {
                let name = format!("{prefix}{i}");
                let input = x.clone();
                x = self.layer_forward(&name, layer, &x, mode, rng)?;
                if let (Some(t), Layer::Linear { .. }) = (taps.as_deref_mut(), layer) {
                    let probe = Var::zeros(x.dims(), x.dtype(), x.device())
                        .map_err(ce("creating a probe"))?;
                    x = (x + probe.as_tensor()).map_err(ce("adding a probe"))?;
                    t.linear.insert(name, (input, probe));
                }
            }
        }
        Ok(x)
    }

    fn var(&self, name: &str) -> Result<&Tensor> {
        self.params
            .get(name)
            .map(|v| v.as_tensor())
            .or_else(|| self.lora.as_ref().and_then(|l| l.frozen.get(name)))
            .ok_or_else(|| MnemoError::InvalidArch {
                origin: None,
                reason: format!("internal: no parameter '{name}'"),
            })
    }

    fn layer_forward(
        &mut self,
        name: &str,
        layer: &Layer,
        x: &Tensor,
        mode: Mode,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let ctx = || format!("layer {name} ({})", layer.kind());
        let c = |e: candle_core::Error| MnemoError::Compute {
            context: format!("{}: input shape {:?}", ctx(), x.dims()),
            source: e,
        };
        let w = |s: &Self, n: &str| s.var(&join(name, n)).cloned();
        Ok(match *layer {
            Layer::Linear { bias, .. } => {
                let wt = w(self, "weight")?;
                let y = if x.rank() == 2 {
                    x.matmul(&wt.t().map_err(c)?)
                } else {
                    x.broadcast_matmul(&wt.t().map_err(c)?)
                }
                .map_err(c)?;
                let y = if bias {
                    y.broadcast_add(&w(self, "bias")?).map_err(c)?
                } else {
                    y
                };
                self.lora_term(name, x, y, mode, rng)?
            }
            Layer::Conv2d {
                stride,
                padding,
                groups,
                bias,
                ..
            } => {
                // f32 on the CPU: the host kernels of conv.rs; candle's conv2d otherwise.
                let y = conv::conv2d(x, &w(self, "weight")?, padding, stride, groups).map_err(c)?;
                let y = if bias {
                    let b = w(self, "bias")?;
                    let n = b.dim(0).map_err(c)?;
                    y.broadcast_add(&b.reshape((1, n, 1, 1)).map_err(c)?)
                        .map_err(c)?
                } else {
                    y
                };
                self.lora_term(name, x, y, mode, rng)?
            }
            Layer::BatchNorm1d { eps, momentum, .. } | Layer::BatchNorm2d { eps, momentum, .. } => {
                // Under an adapter the base is frozen, running statistics included: the
                // adapter alone (as PEFT loads it) must reproduce what was trained.
                let mode = if self.lora.is_some() {
                    Mode::Eval
                } else {
                    mode
                };
                self.batchnorm(name, x, eps, momentum, mode).map_err(c)?
            }
            Layer::LayerNorm {
                ref normalized_shape,
                eps,
            } => {
                let k = normalized_shape.len();
                let dims = x.dims().to_vec();
                if dims.len() < k || dims[dims.len() - k..] != normalized_shape[..] {
                    return Err(MnemoError::ShapeMismatch {
                        path: name.into(),
                        tensor: format!("{name} (layernorm input)"),
                        found: dims,
                        expected: normalized_shape.clone(),
                    });
                }
                let lead: usize = dims[..dims.len() - k].iter().product();
                let xf = x
                    .reshape((lead, normalized_shape.iter().product::<usize>()))
                    .map_err(c)?;
                let mean = xf.mean_keepdim(1).map_err(c)?;
                let xc = xf.broadcast_sub(&mean).map_err(c)?;
                let var = xc.sqr().map_err(c)?.mean_keepdim(1).map_err(c)?;
                let xn = xc
                    .broadcast_div(&(var + eps).map_err(c)?.sqrt().map_err(c)?)
                    .map_err(c)?
                    .reshape(dims.as_slice())
                    .map_err(c)?;
                xn.broadcast_mul(&w(self, "weight")?)
                    .map_err(c)?
                    .broadcast_add(&w(self, "bias")?)
                    .map_err(c)?
            }
            Layer::Relu => x.relu().map_err(c)?,
            // Exact GELU from erf: candle's gelu_erf backward uses a rounded constant.
            Layer::Gelu => {
                let e = (x / std::f64::consts::SQRT_2)
                    .map_err(c)?
                    .erf()
                    .map_err(c)?;
                ((x * 0.5).map_err(c)? * (e + 1.0).map_err(c)?).map_err(c)?
            }
            Layer::Tanh => x.tanh().map_err(c)?,
            Layer::Sigmoid => candle_nn::ops::sigmoid(x).map_err(c)?,
            Layer::MaxPool2d {
                kernel_size,
                stride,
                padding,
            } => pool2d(
                x,
                kernel_size,
                stride.unwrap_or(kernel_size),
                padding,
                Pool::Max,
            )
            .map_err(c)?,
            // torch's default count_include_pad=True: zero padding is averaged in.
            Layer::AvgPool2d {
                kernel_size,
                stride,
                padding,
            } => pool2d(
                x,
                kernel_size,
                stride.unwrap_or(kernel_size),
                padding,
                Pool::Avg,
            )
            .map_err(c)?,
            Layer::AdaptiveAvgPool => x
                .mean_keepdim(D::Minus1)
                .map_err(c)?
                .mean_keepdim(D::Minus2)
                .map_err(c)?,
            Layer::Flatten => x.flatten_from(1).map_err(c)?,
            Layer::Dropout { p } => dropout(x, p, mode, rng).map_err(c)?,
            Layer::Silu => x.silu().map_err(c)?,
            Layer::Hardswish => {
                let relu6 = (x + 3.0)
                    .map_err(c)?
                    .relu()
                    .map_err(c)?
                    .minimum(6.0)
                    .map_err(c)?;
                (x * relu6).map_err(c)?.affine(1.0 / 6.0, 0.0).map_err(c)?
            }
            Layer::Sequential { .. } | Layer::Module { .. } => {
                self.children_forward(name, &layer.children(), x, mode, rng)?
            }
            Layer::Residual {
                ref body,
                ref shortcut,
                ref post,
                stochastic_depth: p,
            } => {
                let b = self.children_forward(name, &pairs(body), x, mode, rng)?;
                let b = stochastic_depth(&b, p, mode, rng).map_err(c)?;
                let s = self.children_forward(name, &pairs(shortcut), x, mode, rng)?;
                let y = (b + s).map_err(c)?;
                self.children_forward(name, &pairs(post), &y, mode, rng)?
            }
            Layer::SqueezeExcitation { activation, .. } => {
                let kids = layer.children();
                let s = x
                    .mean_keepdim(D::Minus1)
                    .map_err(c)?
                    .mean_keepdim(D::Minus2)
                    .map_err(c)?;
                let s = self.layer_forward(&join(name, "fc1"), &kids[0].1, &s, mode, rng)?;
                let s = match activation {
                    spec::Activation::Relu => s.relu(),
                    spec::Activation::Silu => s.silu(),
                }
                .map_err(c)?;
                let s = self.layer_forward(&join(name, "fc2"), &kids[1].1, &s, mode, rng)?;
                let s = candle_nn::ops::sigmoid(&s).map_err(c)?;
                x.broadcast_mul(&s).map_err(c)?
            }
            Layer::PatchEmbedding {
                image_size, dim, ..
            } => {
                let (b, _, h, wd) = x.dims4().map_err(c)?;
                if h != image_size || wd != image_size {
                    return Err(MnemoError::ShapeMismatch {
                        path: name.into(),
                        tensor: format!("{name} (patch-embedding input)"),
                        found: x.dims().to_vec(),
                        expected: vec![b, x.dim(1).map_err(c)?, image_size, image_size],
                    });
                }
                let kids = layer.children();
                let y = self.layer_forward(&join(name, "conv_proj"), &kids[0].1, x, mode, rng)?;
                // [B, D, h, w] -> [B, h·w, D], patches in row-major order as torchvision.
                let y = y
                    .flatten_from(2)
                    .and_then(|y| y.transpose(1, 2))
                    .and_then(|y| y.contiguous())
                    .map_err(c)?;
                let cls = w(self, "class_token")?
                    .broadcast_as((b, 1, dim))
                    .map_err(c)?;
                let pos = w(self, "pos_embedding")?;
                Tensor::cat(&[&cls, &y], 1)
                    .and_then(|y| y.broadcast_add(&pos))
                    .map_err(c)?
            }
            Layer::SelfAttention {
                num_heads,
                dropout: p,
                ..
            } => self.attention(name, layer, x, num_heads, p, mode, rng)?,
            Layer::EncoderBlock { .. } => {
                let kids = layer.children();
                let mut run = |s: &mut Self, i: usize, h: &Tensor| {
                    s.layer_forward(&join(name, &kids[i].0), &kids[i].1, h, mode, rng)
                };
                // ln_1, self_attention, dropout, + x; ln_2, mlp, + x.
                let h = run(self, 0, x)?;
                let h = run(self, 1, &h)?;
                let h = run(self, 2, &h)?;
                let x1 = (x + h).map_err(c)?;
                let h = run(self, 3, &x1)?;
                let h = run(self, 4, &h)?;
                (x1 + h).map_err(c)?
            }
            Layer::ClassToken => x.narrow(1, 0, 1).and_then(|t| t.squeeze(1)).map_err(c)?,
            Layer::Upsample {
                scale_factor,
                size,
                mode: m,
            } => upsample(x, scale_factor, size, m).map_err(c)?,
            Layer::Heads { ref heads } => {
                let Some(h) = self.active_head.clone() else {
                    return Err(MnemoError::InvalidArch {
                        origin: None,
                        reason: format!(
                            "the model has several heads; choose one with --head ({})",
                            self.spec.head_names().join(", ")
                        ),
                    });
                };
                let Some((_, head)) = heads.0.iter().find(|(n, _)| *n == h) else {
                    return Err(MnemoError::InvalidArch {
                        origin: None,
                        reason: format!(
                            "no head named '{h}'; the model's heads are: {}",
                            self.spec.head_names().join(", ")
                        ),
                    });
                };
                self.layer_forward(&join(name, &h), head, x, mode, rng)?
            }
        })
    }

    /// Runs `children` (named under `name`) one after another; no children is the identity.
    fn children_forward(
        &mut self,
        name: &str,
        children: &[(Cow<'_, str>, Cow<'_, Layer>)],
        x: &Tensor,
        mode: Mode,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (child_name, child) in children {
            h = self.layer_forward(&join(name, child_name), child, &h, mode, rng)?;
        }
        Ok(h)
    }

    /// Multi-head self-attention on x [B, N, D]: softmax(q·kᵀ/√d_head)·v per head, then
    /// `o_proj`. The softmax is written out (max-shifted exp over the sum) so it has a
    /// backward; the projections go through `layer_forward`, so LoRA applies to them.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        name: &str,
        layer: &Layer,
        x: &Tensor,
        num_heads: usize,
        p: f64,
        mode: Mode,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let c = |e: candle_core::Error| MnemoError::Compute {
            context: format!("layer {name} (self-attention): input shape {:?}", x.dims()),
            source: e,
        };
        let (b, n, d) = x.dims3().map_err(c)?;
        let dh = d / num_heads;
        let kids = layer.children();
        let proj = |s: &mut Self, i: usize, h: &Tensor, rng: &mut Rng| {
            s.layer_forward(&join(name, &kids[i].0), &kids[i].1, h, mode, rng)
        };
        let heads = |t: Tensor| {
            t.reshape((b, n, num_heads, dh))
                .and_then(|t| t.transpose(1, 2))
                .and_then(|t| t.contiguous())
        };
        let q = heads(proj(self, 0, x, rng)?).map_err(c)?;
        let k = heads(proj(self, 1, x, rng)?).map_err(c)?;
        let v = heads(proj(self, 2, x, rng)?).map_err(c)?;
        let kt = k.transpose(2, 3).and_then(|t| t.contiguous()).map_err(c)?;
        let scores = (q.matmul(&kt).map_err(c)? / (dh as f64).sqrt()).map_err(c)?;
        let max = scores.max_keepdim(D::Minus1).map_err(c)?.detach();
        let e = scores
            .broadcast_sub(&max)
            .and_then(|t| t.exp())
            .map_err(c)?;
        let attn = e
            .broadcast_div(&e.sum_keepdim(D::Minus1).map_err(c)?)
            .map_err(c)?;
        let attn = dropout(&attn, p, mode, rng).map_err(c)?;
        let out = attn
            .matmul(&v)
            .and_then(|t| t.transpose(1, 2))
            .and_then(|t| t.contiguous())
            .and_then(|t| t.reshape((b, n, d)))
            .map_err(c)?;
        proj(self, 3, &out, rng)
    }

    /// `y` plus the LoRA term scale·B(A(dropout(x))) when module `name` is adapted.
    fn lora_term(
        &self,
        name: &str,
        x: &Tensor,
        y: Tensor,
        mode: Mode,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let Some(l) = &self.lora else { return Ok(y) };
        let Some(kind) = l.modules.get(name) else {
            return Ok(y);
        };
        let c = |e: candle_core::Error| MnemoError::Compute {
            context: format!("LoRA of module {name}"),
            source: e,
        };
        let a = self.var(&a_name(name))?;
        let b = self.var(&b_name(name))?;
        let xd = dropout(x, l.config.dropout, mode, rng).map_err(c)?;
        let delta = match *kind {
            TargetKind::Linear { .. } => {
                let h = if xd.rank() == 2 {
                    xd.matmul(&a.t().map_err(c)?)
                } else {
                    xd.broadcast_matmul(&a.t().map_err(c)?)
                }
                .map_err(c)?;
                if h.rank() == 2 {
                    h.matmul(&b.t().map_err(c)?)
                } else {
                    h.broadcast_matmul(&b.t().map_err(c)?)
                }
                .map_err(c)?
            }
            TargetKind::Conv2d {
                stride, padding, ..
            } => xd
                .conv2d(a, padding, stride, 1, 1)
                .and_then(|h| h.conv2d(b, 0, 1, 1, 1))
                .map_err(c)?,
        };
        (y + (delta * l.config.scale()).map_err(c)?).map_err(c)
    }

    fn batchnorm(
        &mut self,
        name: &str,
        x: &Tensor,
        eps: f64,
        momentum: f64,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let lookup = |n: String| {
            self.var(&n)
                .cloned()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        };
        let weight = lookup(join(name, "weight"))?;
        let bias = lookup(join(name, "bias"))?;
        let rm_key = join(name, "running_mean");
        let rv_key = join(name, "running_var");
        let c = weight.dim(0)?;
        // Statistics over every dim but the channel dim (1): [B,C] or [B,C,H,W].
        let shape: Vec<usize> = (0..x.rank()).map(|d| if d == 1 { c } else { 1 }).collect();
        let (mean, var) = match mode {
            Mode::Eval => (
                self.buffers[&rm_key].reshape(shape.as_slice())?,
                self.buffers[&rv_key].reshape(shape.as_slice())?,
            ),
            Mode::Train => {
                let mut mean = x.clone();
                let mut n = 1usize;
                for d in (0..x.rank()).rev().filter(|&d| d != 1) {
                    n *= x.dim(d)?;
                    mean = mean.mean_keepdim(d)?;
                }
                let xc = x.broadcast_sub(&mean)?;
                let mut var = xc.sqr()?;
                for d in (0..x.rank()).rev().filter(|&d| d != 1) {
                    var = var.mean_keepdim(d)?;
                }
                // Running stats use the unbiased variance, as torch does; no gradient flows there.
                let unbiased = if n > 1 {
                    n as f64 / (n as f64 - 1.0)
                } else {
                    1.0
                };
                let m1 = mean.detach().flatten_all()?;
                let v1 = (var.detach().flatten_all()? * unbiased)?;
                let rm = ((&self.buffers[&rm_key] * (1.0 - momentum))? + (m1 * momentum)?)?;
                let rv = ((&self.buffers[&rv_key] * (1.0 - momentum))? + (v1 * momentum)?)?;
                self.buffers.insert(rm_key, rm);
                self.buffers.insert(rv_key, rv);
                *self
                    .counters
                    .entry(join(name, "num_batches_tracked"))
                    .or_insert(0) += 1;
                (mean, var)
            }
        };
        let xn = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + eps)?.sqrt()?)?;
        xn.broadcast_mul(&weight.reshape(shape.as_slice())?)?
            .broadcast_add(&bias.reshape(shape.as_slice())?)
    }
}

/// A host copy of every tensor of a model (parameters, running statistics, counters): what
/// early stopping keeps as the best weights, and what a training state file stores.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub values: BTreeMap<String, Vec<f32>>,
    pub counters: BTreeMap<String, i64>,
}

impl Snapshot {
    /// Reads `PREFIX<name>` for every tensor of `manifest` (`Model::manifest`) from `ckpt`,
    /// checking shapes.
    pub fn read(ckpt: &Checkpoint, manifest: &[ParamSpec], prefix: &str) -> Result<Snapshot> {
        let mut snap = Snapshot::default();
        for p in manifest.iter().cloned() {
            let name = format!("{prefix}{}", p.name);
            let e = ckpt.entry(&name)?;
            if p.kind == ParamKind::Counter {
                snap.counters.insert(p.name, ckpt.to_i64(&name)?[0]);
                continue;
            }
            if e.shape != p.shape {
                return Err(MnemoError::ShapeMismatch {
                    path: ckpt.path.clone(),
                    tensor: name,
                    found: e.shape.clone(),
                    expected: p.shape,
                });
            }
            snap.values.insert(p.name, ckpt.to_f32(&name)?);
        }
        Ok(snap)
    }

    /// The snapshot as tensors named `PREFIX<name>`, ready for `write_checkpoint`.
    pub fn tensors(&self, manifest: &[ParamSpec], prefix: &str) -> Vec<OwnedTensor<'static>> {
        manifest
            .iter()
            .cloned()
            .map(|p| {
                let name = format!("{prefix}{}", p.name);
                match p.kind {
                    ParamKind::Counter => OwnedTensor {
                        name,
                        dtype: Dtype::I64,
                        shape: vec![],
                        data: Cow::Owned(self.counters[&p.name].to_le_bytes().to_vec()),
                    },
                    _ => OwnedTensor::f32(name, p.shape, &self.values[&p.name]),
                }
            })
            .collect()
    }
}

impl Model {
    /// A host copy of every tensor.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut values = BTreeMap::new();
        let all = self
            .params
            .iter()
            .map(|(k, v)| (k, v.as_tensor()))
            .chain(self.buffers.iter());
        for (name, t) in all {
            let v: Vec<f32> = t
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.to_vec1())
                .map_err(ce(&format!("reading tensor '{name}'")))?;
            values.insert(name.clone(), v);
        }
        Ok(Snapshot {
            values,
            counters: self.counters.clone(),
        })
    }

    /// The tensors the model trains and tracks, by name: the spec's state dict, or with a
    /// LoRA adapter attached, the adapter's weights and the batchnorm state.
    pub fn manifest(&self) -> Vec<ParamSpec> {
        let spec = self.spec.params();
        let Some(l) = &self.lora else { return spec };
        let mut out: Vec<ParamSpec> = spec
            .into_iter()
            .filter(|p| p.kind != ParamKind::Trainable)
            .collect();
        for (m, kind) in &l.modules {
            for (name, shape) in [
                (a_name(m), kind.a_shape(l.config.rank)),
                (b_name(m), kind.b_shape(l.config.rank)),
            ] {
                out.push(ParamSpec {
                    name,
                    shape,
                    kind: ParamKind::Trainable,
                });
            }
        }
        out
    }

    /// Sets every tensor from a snapshot of a model of the same manifest.
    pub fn restore(&mut self, snap: &Snapshot) -> Result<()> {
        for p in self.manifest() {
            if p.kind == ParamKind::Counter {
                self.counters.insert(p.name.clone(), snap.counters[&p.name]);
                continue;
            }
            let t = Tensor::from_slice(&snap.values[&p.name], p.shape.as_slice(), &self.device)
                .map_err(ce(&format!("placing tensor '{}'", p.name)))?;
            match p.kind {
                ParamKind::Trainable => self.params[&p.name]
                    .set(&t)
                    .map_err(ce(&format!("setting '{}'", p.name)))?,
                _ => {
                    self.buffers.insert(p.name.clone(), t);
                }
            }
        }
        Ok(())
    }

    /// The model's tensors in F32 (counters I64), ready for `write_checkpoint`.
    pub fn tensors(&self) -> Result<Vec<OwnedTensor<'static>>> {
        Ok(self.snapshot()?.tensors(&self.manifest(), ""))
    }

    /// Attaches a LoRA adapter to `modules`: the base weights are frozen and only the
    /// adapter's A and B train. A starts kaiming-uniform(a=√5) (U(±1/√fan_in), drawn from
    /// `seed`), B at zero, as PEFT initialises them — or both from `init`.
    pub fn attach_lora(
        &mut self,
        config: LoraConfig,
        modules: BTreeMap<String, TargetKind>,
        init: Option<&Adapter>,
        seed: u64,
    ) -> Result<()> {
        if self.lora.is_some() {
            return Err(MnemoError::InvalidTargets {
                reason: "the model already has an adapter".into(),
            });
        }
        let frozen: BTreeMap<String, Tensor> = std::mem::take(&mut self.params)
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().detach()))
            .collect();
        let mut rng = Rng::new(seed);
        let r = config.rank;
        for (m, kind) in &modules {
            let (a, b) = match init.and_then(|ad| ad.modules.get(m)) {
                Some(w) => (w.a.clone(), w.b.clone()),
                None => {
                    let bound = 1.0 / (kind.a_fan_in() as f64).sqrt();
                    let n: usize = kind.a_shape(r).iter().product();
                    let a = (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect();
                    (a, vec![0.0; kind.b_shape(r).iter().product()])
                }
            };
            for (name, shape, v) in [
                (a_name(m), kind.a_shape(r), a),
                (b_name(m), kind.b_shape(r), b),
            ] {
                let t = Tensor::from_vec(v, shape.as_slice(), &self.device)
                    .map_err(ce(&format!("placing '{name}'")))?;
                self.params
                    .insert(name, Var::from_tensor(&t).map_err(ce("creating var"))?);
            }
        }
        self.lora = Some(LoraAttachment {
            config,
            modules,
            frozen,
        });
        Ok(())
    }

    /// The attached adapter's current weights.
    pub fn adapter(&self) -> Result<Option<Adapter>> {
        let Some(l) = &self.lora else { return Ok(None) };
        let snap = self.snapshot()?;
        let r = l.config.rank;
        let modules = l
            .modules
            .iter()
            .map(|(m, kind)| {
                (
                    m.clone(),
                    ModuleAdapter {
                        a: snap.values[&a_name(m)].clone(),
                        a_shape: kind.a_shape(r),
                        b: snap.values[&b_name(m)].clone(),
                        b_shape: kind.b_shape(r),
                    },
                )
            })
            .collect();
        Ok(Some(Adapter {
            config: l.config.clone(),
            modules,
        }))
    }

    /// The full checkpoint of the spec; with an adapter attached, the base weights with the
    /// adapter folded in (W + scale·B·A).
    pub fn merged_tensors(&self) -> Result<Vec<OwnedTensor<'static>>> {
        let Some(l) = &self.lora else {
            return self.tensors();
        };
        let adapter = self.adapter()?.expect("attached");
        let mut snap = self.snapshot()?;
        for (name, t) in &l.frozen {
            let v: Vec<f32> = t
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(ce(&format!("reading '{name}'")))?;
            snap.values.insert(name.clone(), v);
        }
        let scale = l.config.scale();
        for (m, w) in &adapter.modules {
            let wname = format!("{m}.weight");
            let shape = l.frozen[&wname].dims().to_vec();
            let values = snap.values.get_mut(&wname).expect("frozen weight");
            crate::lora::fold(values, &shape, w, scale, Path::new("<model>"), &wname)?;
        }
        Ok(snap.tensors(&self.spec.params(), ""))
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
            None => Err(MnemoError::NoArch {
                path: ckpt.path.clone(),
            }),
        },
    }
}

/// Named children as `Layer::children` gives them.
fn pairs(c: &spec::Children) -> Vec<(Cow<'_, str>, Cow<'_, Layer>)> {
    c.0.iter()
        .map(|(n, l)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(l)))
        .collect()
}

/// Inverted dropout with masks from `rng` (identity in eval mode or for p = 0).
fn dropout(x: &Tensor, p: f64, mode: Mode, rng: &mut Rng) -> candle_core::Result<Tensor> {
    if mode == Mode::Eval || p == 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.next_f64() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    x * Tensor::from_vec(mask, x.dims(), x.device())?
}

/// torchvision's `StochasticDepth(p, "row")`: in train mode each example (row) is zeroed
/// with probability p and the others scaled by 1/(1 − p); the identity in eval mode or
/// for p = 0. The draws come from `rng`, one per row.
fn stochastic_depth(x: &Tensor, p: f64, mode: Mode, rng: &mut Rng) -> candle_core::Result<Tensor> {
    if mode == Mode::Eval || p == 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let rows = x.dim(0)?;
    let mask: Vec<f32> = (0..rows)
        .map(|_| {
            if rng.next_f64() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mut shape = vec![1usize; x.rank()];
    shape[0] = rows;
    x.broadcast_mul(&Tensor::from_vec(mask, shape.as_slice(), x.device())?.to_dtype(x.dtype())?)
}

#[derive(Clone, Copy, PartialEq)]
enum Pool {
    Max,
    Avg,
}

/// Pads the last two dims with `value`: `lo` before and `hi` after.
fn pad2d(x: &Tensor, lo: usize, hi: usize, value: f32) -> candle_core::Result<Tensor> {
    if lo == 0 && hi == 0 {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return x
            .pad_with_zeros(D::Minus1, lo, hi)?
            .pad_with_zeros(D::Minus2, lo, hi);
    }
    let mut x = x.clone();
    for dim in [x.rank() - 1, x.rank() - 2] {
        let mut parts = Vec::new();
        for n in [lo, usize::MAX, hi] {
            if n == usize::MAX {
                parts.push(x.clone());
            } else if n > 0 {
                let mut s = x.dims().to_vec();
                s[dim] = n;
                parts.push(Tensor::full(value, s.as_slice(), x.device())?.to_dtype(x.dtype())?);
            }
        }
        x = Tensor::cat(&parts, dim)?;
    }
    Ok(x)
}

/// 2-D pooling with torch's output size, floor((H + 2p − k)/s) + 1, built from ops whose
/// backward is right: a reshape when kernel = stride without padding, otherwise k² shifted,
/// strided views (candle's pooling has no backward there).
fn pool2d(x: &Tensor, k: usize, s: usize, p: usize, kind: Pool) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if k == s && p == 0 {
        // Non-overlapping windows as a reshape and two reductions. candle's own max_pool2d
        // backward scales the gradient by 1/k² (it multiplies by the window's mean mask), and
        // its avg_pool2d backward is wrong when the size is not a multiple of k.
        let (oh, ow) = (h / k, w / k);
        let v = x
            .narrow(2, 0, oh * k)?
            .narrow(3, 0, ow * k)?
            .reshape((b, c, oh, k, ow, k))?;
        return match kind {
            Pool::Max => v.max(5)?.max(3),
            Pool::Avg => v.mean(5)?.mean(3),
        };
    }
    if h + 2 * p < k || w + 2 * p < k {
        candle_core::bail!("pool kernel {k} is larger than the padded input {h}x{w}");
    }
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let fill = if kind == Pool::Max {
        f32::NEG_INFINITY
    } else {
        0.0
    };
    // Extra fill on the far side so every shifted view spans whole strides.
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let extra_h = (k - 1 + oh * s).saturating_sub(hp);
    let extra_w = (k - 1 + ow * s).saturating_sub(wp);
    let xp = pad2d(x, p, p, fill)?;
    let xp = if extra_h > 0 || extra_w > 0 {
        let xp = if extra_h > 0 {
            pad_dim(&xp, 2, extra_h, fill)?
        } else {
            xp
        };
        if extra_w > 0 {
            pad_dim(&xp, 3, extra_w, fill)?
        } else {
            xp
        }
    } else {
        xp
    };
    let mut acc: Option<Tensor> = None;
    for di in 0..k {
        for dj in 0..k {
            let v = xp
                .narrow(2, di, oh * s)?
                .narrow(3, dj, ow * s)?
                .reshape((b, c, oh, s, ow, s))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((b, c, oh, ow))?;
            acc = Some(match (acc, kind) {
                (None, _) => v,
                (Some(a), Pool::Max) => a.maximum(&v)?,
                (Some(a), Pool::Avg) => (a + v)?,
            });
        }
    }
    let acc = acc.expect("k >= 1");
    match kind {
        Pool::Max => Ok(acc),
        Pool::Avg => acc / (k * k) as f64,
    }
}

/// torch's `nn.Upsample` on [B, C, H, W], separably: along H then W, each output row
/// (column) a weighted sum of at most two input rows picked by `index_select`, whose
/// backward (`index_add`) is exact. candle's own `upsample_nearest2d` is not used: like its
/// pooling, it is not trusted to have a right backward. Indices and weights follow
/// ATen's CPU kernels to the float32 rounding: scale = 1/scale_factor (or in/out for
/// `size`) as f32; nearest takes floor(dst·scale); bilinear (align_corners=False) takes
/// src = max(scale·(dst + 0.5) − 0.5, 0), i0 = floor(src), i1 = i0 + 1 clamped to the edge,
/// weights 1 − λ and λ = src − i0.
fn upsample(
    x: &Tensor,
    scale_factor: Option<usize>,
    size: Option<[usize; 2]>,
    mode: spec::UpsampleMode,
) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow, scales) = match (scale_factor, size) {
        (Some(s), _) => {
            let sc = (1.0 / s as f64) as f32;
            (h.saturating_mul(s), w.saturating_mul(s), [sc, sc])
        }
        (None, Some([oh, ow])) => (oh, ow, [h as f32 / oh as f32, w as f32 / ow as f32]),
        (None, None) => candle_core::bail!("upsample needs scale_factor or size"),
    };
    // An absurd size is an error, not an allocation abort; indices stay exact in f32.
    let elems = [b, c, oh, ow]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= 1 << 32);
    if elems.is_none() || oh > 1 << 24 || ow > 1 << 24 {
        candle_core::bail!("upsampling {h}x{w} to {oh}x{ow} is too large");
    }
    let y = upsample_dim(x, 2, h, oh, scales[0], mode)?;
    upsample_dim(&y, 3, w, ow, scales[1], mode)
}

/// One axis of `upsample`: `dim` of size `n` becomes `out`.
fn upsample_dim(
    x: &Tensor,
    dim: usize,
    n: usize,
    out: usize,
    scale: f32,
    mode: spec::UpsampleMode,
) -> candle_core::Result<Tensor> {
    if n == out {
        return Ok(x.clone());
    }
    let dev = x.device();
    let last = n as i64 - 1;
    match mode {
        spec::UpsampleMode::Nearest => {
            let idx: Vec<u32> = (0..out)
                .map(|d| ((d as f32 * scale).floor() as i64).min(last) as u32)
                .collect();
            x.index_select(&Tensor::new(idx.as_slice(), dev)?, dim)
        }
        spec::UpsampleMode::Bilinear => {
            let (mut i0, mut i1, mut l0, mut l1) = (vec![], vec![], vec![], vec![]);
            for d in 0..out {
                let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
                let i = (src.floor() as i64).min(last);
                let lambda = (src - i as f32).clamp(0.0, 1.0);
                i0.push(i as u32);
                i1.push((i + i64::from(i < last)) as u32);
                l0.push(1.0 - lambda);
                l1.push(lambda);
            }
            let mut shape = [1usize; 4];
            shape[dim] = out;
            let pick = |i: Vec<u32>, l: Vec<f32>| -> candle_core::Result<Tensor> {
                let weights = Tensor::from_vec(l, &shape[..], dev)?.to_dtype(x.dtype())?;
                x.index_select(&Tensor::new(i.as_slice(), dev)?, dim)?
                    .broadcast_mul(&weights)
            };
            pick(i0, l0)? + pick(i1, l1)?
        }
    }
}

/// Appends `n` entries of `value` at the end of `dim`.
fn pad_dim(x: &Tensor, dim: usize, n: usize, value: f32) -> candle_core::Result<Tensor> {
    let mut s = x.dims().to_vec();
    s[dim] = n;
    let fill = Tensor::full(value, s.as_slice(), x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[x, &fill], dim)
}

/// Parses `--device cpu|cuda[:N]`.
pub fn parse_device(s: &str) -> Result<Device> {
    let err = |reason: String| MnemoError::Device {
        device: s.to_string(),
        reason,
    };
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| err(format!("'{n}' is not a GPU index")))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(err("this mnemo was built without the 'cuda' feature (cargo build --release --features cuda)".into()));
            }
            Device::new_cuda(ordinal).map_err(|e| err(e.to_string()))
        }
        _ => Err(err("expected cpu, cuda or cuda:N".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_gradient_is_one_at_the_maximum() {
        // candle 0.11's max_pool2d backward gives 1/k² here; torch gives 1.
        let x = Var::new(
            &[[[[1f32, 2.0, 0.5], [3.0, 4.0, 0.1], [9.0, 9.0, 9.0]]]],
            &Device::Cpu,
        )
        .unwrap();
        for (k, s, p) in [(2, 2, 0), (2, 1, 0), (3, 2, 1)] {
            let y = pool2d(x.as_tensor(), k, s, p, Pool::Max).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            let gx: Vec<f32> = g
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            if (k, s, p) == (2, 2, 0) {
                assert_eq!(
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    vec![4.0]
                );
                assert_eq!(gx, vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
            }
            let total: f32 = gx.iter().sum();
            assert!(total >= y.elem_count() as f32, "{k} {s} {p}: {gx:?}");
        }
        let y = pool2d(x.as_tensor(), 2, 2, 0, Pool::Avg).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(gx, vec![0.25, 0.25, 0.0, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn stochastic_depth_drops_whole_rows_and_rescales_the_rest() {
        let x = Tensor::ones((64, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let y = stochastic_depth(&x, 0.25, Mode::Train, &mut Rng::new(5)).unwrap();
        let rows: Vec<Vec<f32>> = y.flatten_from(1).unwrap().to_vec2().unwrap();
        let mut dropped = 0;
        for r in &rows {
            // Each row is all 0 or all 1/(1 − p).
            assert!(r.iter().all(|v| *v == r[0]), "{r:?}");
            if r[0] == 0.0 {
                dropped += 1;
            } else {
                assert!((r[0] - 1.0 / 0.75).abs() < 1e-6);
            }
        }
        assert!((5..=30).contains(&dropped), "{dropped}");
        let again = stochastic_depth(&x, 0.25, Mode::Train, &mut Rng::new(5)).unwrap();
        assert_eq!(flat(&again), flat(&y), "the seed decides");
        let eval = stochastic_depth(&x, 0.25, Mode::Eval, &mut Rng::new(5)).unwrap();
        assert_eq!(flat(&eval), flat(&x));
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn silu_and_hardswish_values() {
        let spec = ArchSpec::parse(r#"[{"type":"silu"},{"type":"hardswish"}]"#).unwrap();
        let mut m = Model::init(&spec, 0, &Device::Cpu).unwrap();
        let x = Tensor::new(&[[-4f32, -1.0, 0.0, 1.0, 4.0]], &Device::Cpu).unwrap();
        let mut rng = Rng::new(0);
        let silu = |v: f32| v / (1.0 + (-v).exp());
        let hardswish = |v: f32| v * (v + 3.0).clamp(0.0, 6.0) / 6.0;
        let got = flat(&m.forward(&x, None, Mode::Eval, &mut rng).unwrap());
        for (g, v) in got.iter().zip([-4f32, -1.0, 0.0, 1.0, 4.0]) {
            assert!((g - hardswish(silu(v))).abs() < 1e-6, "{v}: {g}");
        }
    }
}
