//! The forward pass: every layer kind in train or eval mode, built only from candle ops
//! that have a backward (our own layernorm, GELU from erf, pooling from shifted views when
//! kernel ≠ stride, attention's softmax written out). Containers recurse with their
//! children's full names, so batchnorm state and adapter terms are found by name at any
//! depth.

use super::ops::{dropout, pool2d, softmax_last_dim, stochastic_depth, upsample, Pool};
use super::{conv, norm};
use super::{Mode, Model, Taps};
use crate::arch::{join, Activation, ArchSpec, Children, Layer};
use crate::error::{MnemoError, Result};
use crate::rng::Rng;
use candle_core::{Tensor, Var, D};
use std::borrow::Cow;

impl Model {
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
                    reason: "a multi-head model needs a head chosen".into(),
                })
            }
        };
        let mut x = x.clone();
        // An MLP on images: flatten before a leading linear layer, as users expect.
        if let Some(Layer::Linear { .. }) = groups[0].1.first() {
            if x.rank() > 2 {
                x = x
                    .flatten_from(1)
                    .map_err(MnemoError::compute("flattening the input"))?;
            }
        }
        for (prefix, layers) in &groups {
            for (i, layer) in layers.iter().enumerate() {
                let name = format!("{prefix}{i}");
                let input = x.clone();
                x = self.layer_forward(&name, layer, &x, mode, rng)?;
                if let (Some(t), Layer::Linear { .. }) = (taps.as_deref_mut(), layer) {
                    let probe = Var::zeros(x.dims(), x.dtype(), x.device())
                        .map_err(MnemoError::compute("creating a probe"))?;
                    x = (x + probe.as_tensor()).map_err(MnemoError::compute("adding a probe"))?;
                    t.linear.insert(name, (input, probe));
                }
            }
        }
        Ok(x)
    }

    /// A weight by name: a trainable parameter, or a base weight an adapter froze.
    pub fn weight(&self, name: &str) -> Result<&Tensor> {
        self.params
            .get(name)
            .map(|v| v.as_tensor())
            .or_else(|| self.adapter.as_ref().and_then(|a| a.frozen(name)))
            .ok_or_else(|| MnemoError::InvalidArch {
                origin: None,
                reason: format!("internal: no parameter '{name}'"),
            })
    }

    pub(super) fn layer_forward(
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
        let w = |s: &Self, n: &str| s.weight(&join(name, n)).cloned();
        Ok(match *layer {
            Layer::Linear { bias, .. } => {
                let wt = w(self, "weight")?;
                let y = linear_map(x, &wt).map_err(c)?;
                let y = if bias {
                    y.broadcast_add(&w(self, "bias")?).map_err(c)?
                } else {
                    y
                };
                self.adapter_term(name, x, y, mode, rng)?
            }
            Layer::Conv2d {
                stride,
                padding,
                groups,
                bias,
                static_padding,
                ..
            } => {
                // `Conv2dStaticSamePadding`: ZeroPad2d((left, right, top, bottom)), then the
                // conv without padding (validation keeps `padding` 0 then).
                let padded = match static_padding {
                    Some([left, right, top, bottom]) => Cow::Owned(
                        x.pad_with_zeros(D::Minus1, left, right)
                            .and_then(|x| x.pad_with_zeros(D::Minus2, top, bottom))
                            .map_err(c)?,
                    ),
                    None => Cow::Borrowed(x),
                };
                // f32 on the CPU: the host kernels of conv.rs; candle's conv2d otherwise.
                let y = conv::conv2d(&padded, &w(self, "weight")?, padding, stride, groups)
                    .map_err(c)?;
                let y = if bias {
                    let b = w(self, "bias")?;
                    let n = b.dim(0).map_err(c)?;
                    y.broadcast_add(&b.reshape((1, n, 1, 1)).map_err(c)?)
                        .map_err(c)?
                } else {
                    y
                };
                self.adapter_term(name, x, y, mode, rng)?
            }
            Layer::BatchNorm1d { eps, momentum, .. } | Layer::BatchNorm2d { eps, momentum, .. } => {
                // Under an adapter the base is frozen, running statistics included: the
                // adapter alone (as PEFT loads it) must reproduce what was trained.
                let mode = if self.adapter.is_some() {
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
            Layer::Relu | Layer::Relu6
                if let Some(y) = norm::activation(
                    x,
                    if matches!(layer, Layer::Relu) {
                        norm::Activation::Relu
                    } else {
                        norm::Activation::Relu6
                    },
                )
                .map_err(c)? =>
            {
                y
            }
            Layer::Relu => x.relu().map_err(c)?,
            // x inside (0, 6), the clamp's constant outside: the gradient is exactly the
            // mask, as torch's hardtanh backward (candle's min/max would give ½ at ties).
            Layer::Relu6 => {
                let inside = x.gt(0.0).and_then(|a| a.mul(&x.lt(6.0)?)).map_err(c)?;
                let clamped = x.clamp(0.0, 6.0).map_err(c)?.detach();
                inside.where_cond(x, &clamped).map_err(c)?
            }
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
                    Activation::Relu => s.relu(),
                    Activation::Silu => s.silu(),
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
            Layer::Embedding { num_embeddings, .. } => self.embedding(name, x, num_embeddings)?,
            Layer::RmsNorm { eps, .. } => {
                let var = x.sqr().and_then(|s| s.mean_keepdim(D::Minus1)).map_err(c)?;
                let xn = x
                    .broadcast_div(&(var + eps).map_err(c)?.sqrt().map_err(c)?)
                    .map_err(c)?;
                xn.broadcast_mul(&w(self, "weight")?).map_err(c)?
            }
            Layer::GatedMlp { .. } => {
                let kids = layer.children();
                let mut run = |s: &mut Self, i: usize, h: &Tensor| {
                    s.layer_forward(&join(name, &kids[i].0), &kids[i].1, h, mode, rng)
                };
                let gate = run(self, 0, x)?.silu().map_err(c)?;
                let up = run(self, 1, x)?;
                let h = (gate * up).map_err(c)?;
                run(self, 2, &h)?
            }
            Layer::CausalSelfAttention(ref a) => {
                self.causal_attention(name, layer, a, x, mode, rng)?
            }
            Layer::DecoderLayer(_) => {
                let kids = layer.children();
                let mut run = |s: &mut Self, i: usize, h: &Tensor| {
                    s.layer_forward(&join(name, &kids[i].0), &kids[i].1, h, mode, rng)
                };
                // Children: self_attn, mlp, input_layernorm, post_attention_layernorm.
                let h = run(self, 2, x)?;
                let h = run(self, 0, &h)?;
                let x1 = (x + h).map_err(c)?;
                let h = run(self, 3, &x1)?;
                let h = run(self, 1, &h)?;
                (x1 + h).map_err(c)?
            }
            Layer::TiedLinear { ref weight } => {
                let wt = self.weight(weight)?.clone();
                linear_map(x, &wt).map_err(c)?
            }
            Layer::Heads { ref heads } => {
                let Some(h) = self.active_head.clone() else {
                    return Err(MnemoError::InvalidArch {
                        origin: None,
                        reason: format!(
                            "the model has several heads; choose one of: {}",
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
        let attn = softmax_last_dim(&scores).map_err(c)?;
        let attn = dropout(&attn, p, mode, rng).map_err(c)?;
        let out = attn
            .matmul(&v)
            .and_then(|t| t.transpose(1, 2))
            .and_then(|t| t.contiguous())
            .and_then(|t| t.reshape((b, n, d)))
            .map_err(c)?;
        proj(self, 3, &out, rng)
    }

    /// `y` (module `name`'s output for input `x`) plus an attached adapter's term.
    fn adapter_term(
        &self,
        name: &str,
        x: &Tensor,
        y: Tensor,
        mode: Mode,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        match &self.adapter {
            Some(a) => a.module_output(self, name, x, y, mode, rng),
            None => Ok(y),
        }
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
            self.weight(&n)
                .cloned()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        };
        let weight = lookup(join(name, "weight"))?;
        let bias = lookup(join(name, "bias"))?;
        let rm_key = join(name, "running_mean");
        let rv_key = join(name, "running_var");
        let c = weight.dim(0)?;
        // f32 on the CPU: norm.rs's fused kernels (the same arithmetic, in f64 where it sums).
        let host = match mode {
            Mode::Eval => norm::batch_norm_eval(
                x,
                &weight,
                &bias,
                &self.buffers[&rm_key],
                &self.buffers[&rv_key],
                eps,
            )?
            .map(|y| (y, None)),
            Mode::Train => {
                norm::batch_norm_train(x, &weight, &bias, eps)?.map(|(y, s)| (y, Some(s)))
            }
        };
        if let Some((y, stats)) = host {
            if let Some(s) = stats {
                let dev = x.device();
                let unbiased = unbiased_factor(s.count);
                let m1 = Tensor::from_vec(s.mean.iter().map(|&v| v as f32).collect(), c, dev)?;
                let v1 = Tensor::from_vec(
                    s.var.iter().map(|&v| (v * unbiased) as f32).collect(),
                    c,
                    dev,
                )?;
                self.update_running(name, &rm_key, &rv_key, m1, v1, momentum)?;
            }
            return Ok(y);
        }
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
                let unbiased = unbiased_factor(n);
                let m1 = mean.detach().flatten_all()?;
                let v1 = (var.detach().flatten_all()? * unbiased)?;
                self.update_running(name, &rm_key, &rv_key, m1, v1, momentum)?;
                (mean, var)
            }
        };
        let xn = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + eps)?.sqrt()?)?;
        xn.broadcast_mul(&weight.reshape(shape.as_slice())?)?
            .broadcast_add(&bias.reshape(shape.as_slice())?)
    }

    /// torch's running-statistics update: r ← (1 − momentum)·r + momentum·batch (the
    /// variance unbiased), and one more batch tracked.
    fn update_running(
        &mut self,
        name: &str,
        rm_key: &str,
        rv_key: &str,
        batch_mean: Tensor,
        batch_var: Tensor,
        momentum: f64,
    ) -> candle_core::Result<()> {
        let rm = ((&self.buffers[rm_key] * (1.0 - momentum))? + (batch_mean * momentum)?)?;
        let rv = ((&self.buffers[rv_key] * (1.0 - momentum))? + (batch_var * momentum)?)?;
        self.buffers.insert(rm_key.to_string(), rm);
        self.buffers.insert(rv_key.to_string(), rv);
        *self
            .counters
            .entry(join(name, "num_batches_tracked"))
            .or_insert(0) += 1;
        Ok(())
    }
}

/// n / (n − 1): the biased variance of n values to the unbiased one (1 for a single value).
/// x·Wᵀ for x `[..., in]` and W `[out, in]`. Leading dimensions are folded into one, so a
/// sequence `[B, T, in]` is one `[B·T, in]` matrix product (one large gemm that can use
/// every thread) rather than B products against a broadcast copy of W.
fn linear_map(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let wt = w.t()?;
    if x.rank() == 2 {
        return x.matmul(&wt);
    }
    let dims = x.dims().to_vec();
    let (lead, k) = (
        dims[..dims.len() - 1].iter().product::<usize>(),
        dims[dims.len() - 1],
    );
    let y = x.reshape((lead, k))?.matmul(&wt)?;
    let mut out = dims;
    *out.last_mut().expect("rank > 2") = w.dim(0)?;
    y.reshape(out)
}

fn unbiased_factor(n: usize) -> f64 {
    if n > 1 {
        n as f64 / (n as f64 - 1.0)
    } else {
        1.0
    }
}

/// Named children as `Layer::children` gives them.
fn pairs(c: &Children) -> Vec<(Cow<'_, str>, Cow<'_, Layer>)> {
    c.0.iter()
        .map(|(n, l)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(l)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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

    /// ReLU6's values, and its gradient as torch's hardtanh backward: 1 strictly inside
    /// (0, 6), 0 at and beyond the ends.
    #[test]
    fn relu6_values_and_gradient() {
        let spec = ArchSpec::parse(r#"[{"type":"relu6"}]"#).unwrap();
        let mut m = Model::init(&spec, 0, &Device::Cpu).unwrap();
        let v = [-2f32, 0.0, 0.5, 5.9, 6.0, 7.0, f32::INFINITY];
        let x = Var::new(&v, &Device::Cpu).unwrap();
        let y = m
            .forward(x.as_tensor(), None, Mode::Train, &mut Rng::new(0))
            .unwrap();
        assert_eq!(flat(&y), [0.0, 0.0, 0.5, 5.9, 6.0, 6.0, 6.0]);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            flat(g.get(x.as_tensor()).unwrap()),
            [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        );
    }

    /// A conv with static_padding is ZeroPad2d((left, right, top, bottom)) and then the
    /// conv: the same as padding the input by hand, gradient included.
    #[test]
    fn static_padding_pads_left_right_top_bottom() {
        let dev = Device::Cpu;
        let conv = |sp: &str, padding: usize| {
            ArchSpec::parse(&format!(
                r#"[{{"type":"conv2d","in_channels":2,"out_channels":3,"kernel_size":3,"stride":2,"padding":{padding},"bias":false{sp}}}]"#
            ))
            .unwrap()
        };
        let padded = conv(r#","static_padding":[0,1,2,1]"#, 0);
        let mut a = Model::init(&padded, 5, &dev).unwrap();
        let mut b = Model::init(&conv("", 0), 5, &dev).unwrap();
        let xs: Vec<f32> = (0..2 * 2 * 6 * 7)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let x = Var::from_vec(xs, (2, 2, 6, 7), &dev).unwrap();
        let mut rng = Rng::new(0);
        let ya = a
            .forward(x.as_tensor(), None, Mode::Train, &mut rng)
            .unwrap();
        // By hand: one zero column on the right, two zero rows on top, one below.
        let xp = x
            .as_tensor()
            .pad_with_zeros(D::Minus1, 0, 1)
            .unwrap()
            .pad_with_zeros(D::Minus2, 2, 1)
            .unwrap();
        let yb = b.forward(&xp, None, Mode::Train, &mut rng).unwrap();
        // (6 + 3 − 3) / 2 + 1 = 4 rows, (7 + 1 − 3) / 2 + 1 = 3 columns.
        assert_eq!(ya.dims(), [2, 3, 4, 3]);
        assert_eq!(flat(&ya), flat(&yb));
        let ga = ya.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gb = yb.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            flat(ga.get(x.as_tensor()).unwrap()),
            flat(gb.get(x.as_tensor()).unwrap())
        );
        let wa = ga.get(a.params["0.weight"].as_tensor()).unwrap();
        let wb = gb.get(b.params["0.weight"].as_tensor()).unwrap();
        assert_eq!(flat(wa), flat(wb));
    }

    /// With trunk=lite0 the heads give the same shapes (Lite0's output stride is 32 too).
    #[test]
    fn effnet_multitask_lite0_heads_give_their_shapes() {
        let spec = ArchSpec::parse(
            "effnet_multitask:trunk=lite0,image_size=64,decoder_channels=8,num_classes=3,num_labels=5",
        )
        .unwrap();
        let dev = Device::Cpu;
        let mut m = Model::init(&spec, 1, &dev).unwrap();
        let mut rng = Rng::new(0);
        for (hw, head, want) in [
            ((64, 64), "seg", vec![2, 1, 64, 64]),
            ((32, 64), "seg", vec![2, 1, 32, 64]),
            ((64, 64), "det", vec![2, 5]),
            ((64, 64), "cls", vec![2, 3]),
        ] {
            let x = Tensor::ones((2, 3, hw.0, hw.1), candle_core::DType::F32, &dev).unwrap();
            let y = m.forward(&x, Some(head), Mode::Train, &mut rng).unwrap();
            assert_eq!(y.dims(), want.as_slice(), "{head} {hw:?}");
        }
    }

    /// The multi-task model's heads give their shapes at CI size (the spec's names are
    /// checked in arch/zoo.rs).
    #[test]
    fn effnet_multitask_heads_give_their_shapes() {
        let spec = ArchSpec::parse(
            "effnet_multitask:width_mult=0.25,depth_mult=0.34,decoder_channels=8,num_classes=3,num_labels=5",
        )
        .unwrap();
        let dev = candle_core::Device::Cpu;
        let mut m = Model::init(&spec, 1, &dev).unwrap();
        let mut rng = crate::rng::Rng::new(0);
        for (hw, head, want) in [
            ((64, 64), "seg", vec![2, 1, 64, 64]),
            ((64, 96), "seg", vec![2, 1, 64, 96]),
            ((64, 64), "det", vec![2, 5]),
            ((64, 64), "cls", vec![2, 3]),
        ] {
            let x = candle_core::Tensor::ones((2, 3, hw.0, hw.1), candle_core::DType::F32, &dev)
                .unwrap();
            let y = m.forward(&x, Some(head), Mode::Train, &mut rng).unwrap();
            assert_eq!(y.dims(), want.as_slice(), "{head} {hw:?}");
        }
    }
}
