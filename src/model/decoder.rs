//! The pieces of a decoder-only language model that are not plain layers: the token
//! embedding lookup and causal grouped-query attention with rotary position embeddings,
//! as transformers' `LlamaAttention` computes them in f32 (`eager` attention: scores
//! scaled by 1/√head_dim, the causal mask added, softmax, dropout, then v). Positions are
//! 0..T for every row: sequences are right-padded, and a causal model never lets a real
//! token see the padding after it.

use super::ops::{dropout, softmax_last_dim};
use super::{Mode, Model};
use crate::arch::{join, AttentionConf, Layer, RopeScaling, MAX_TOKEN_ID};
use crate::error::{MnemoError, Result};
use crate::rng::Rng;
use candle_core::{DType, Tensor, D};

impl Model {
    /// `weight[ids]`: token ids `[...]` (floats holding integers) to `[..., dim]`.
    pub(super) fn embedding(&self, name: &str, x: &Tensor, rows: usize) -> Result<Tensor> {
        let c = MnemoError::compute(format!("layer {name} (embedding)"));
        let ids: Vec<f32> = x
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1())
            .map_err(c)?;
        let mut idx = Vec::with_capacity(ids.len());
        for &v in &ids {
            if !v.is_finite() || v.fract() != 0.0 {
                return Err(MnemoError::NotTokenIds {
                    layer: format!("layer {name}"),
                    value: v as f64,
                });
            }
            if !(v >= 0.0 && (v as usize) < rows.min(MAX_TOKEN_ID)) {
                return Err(MnemoError::TokenOutOfRange {
                    layer: format!("layer {name}"),
                    id: v as f64,
                    rows,
                });
            }
            idx.push(v as u32);
        }
        let weight = self.weight(&join(name, "weight"))?;
        let dim = weight
            .dim(1)
            .map_err(MnemoError::compute("embedding weight"))?;
        let c = MnemoError::compute(format!("layer {name} (embedding)"));
        let ids = Tensor::from_vec(idx, ids.len(), &self.device).map_err(c)?;
        let mut shape = x.dims().to_vec();
        shape.push(dim);
        weight
            .index_select(&ids, 0)
            .and_then(|t| t.reshape(shape))
            .map_err(MnemoError::compute(format!("layer {name} (embedding)")))
    }

    /// Causal self-attention of `[B, T, hidden]` through the `q_proj`, `k_proj`, `v_proj`,
    /// `o_proj` children (so adapters apply to them).
    pub(super) fn causal_attention(
        &mut self,
        name: &str,
        layer: &Layer,
        a: &AttentionConf,
        x: &Tensor,
        mode: Mode,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let c = |e: candle_core::Error| MnemoError::Compute {
            context: format!(
                "layer {name} (causal-self-attention): input shape {:?}",
                x.dims()
            ),
            source: e,
        };
        let (b, t, _) = x.dims3().map_err(c)?;
        let (h, kv, dh) = (a.num_attention_heads, a.num_key_value_heads, a.head_dim);
        // The scores are [B, H, T, T] (and the mask [T, T]): a sequence long enough to
        // overflow memory is refused before anything is allocated for it.
        let scores = [b, h, t, t, 4]
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let limit = crate::validate::max_alloc_bytes();
        if scores.is_none_or(|n| n > limit) {
            return Err(MnemoError::TooLarge {
                what: format!("layer {name} (causal-self-attention)"),
                reason: format!(
                    "a batch of {b} sequences of {t} tokens needs {} bytes of attention scores ({h} heads × T²); this machine has {limit}: use shorter sequences or a smaller batch",
                    scores.map_or("more than 2^64".to_string(), |n| n.to_string())
                ),
            });
        }
        let kids = layer.children();
        let proj = |s: &mut Self, i: usize, input: &Tensor, rng: &mut Rng| {
            s.layer_forward(&join(name, &kids[i].0), &kids[i].1, input, mode, rng)
        };
        let heads = |y: Tensor, n: usize| {
            y.reshape((b, t, n, dh))
                .and_then(|y| y.transpose(1, 2))
                .and_then(|y| y.contiguous())
        };
        let q = heads(proj(self, 0, x, rng)?, h).map_err(c)?;
        let k = heads(proj(self, 1, x, rng)?, kv).map_err(c)?;
        let v = heads(proj(self, 2, x, rng)?, kv).map_err(c)?;
        let (cos, sin) = rope_tables(a, t);
        let cos = Tensor::from_vec(cos, (t, dh), &self.device).map_err(c)?;
        let sin = Tensor::from_vec(sin, (t, dh), &self.device).map_err(c)?;
        let rotate = |y: &Tensor| -> candle_core::Result<Tensor> {
            // y·cos + rotate_half(y)·sin, rotate_half(y) = [−y₂, y₁] (the two halves).
            let y1 = y.narrow(D::Minus1, 0, dh / 2)?;
            let y2 = y.narrow(D::Minus1, dh / 2, dh / 2)?;
            let half = Tensor::cat(&[&y2.neg()?, &y1], D::Minus1)?;
            y.broadcast_mul(&cos)? + half.broadcast_mul(&sin)?
        };
        let q = rotate(&q).map_err(c)?;
        let k = rotate(&k).map_err(c)?;
        // Grouped-query attention: kv head j serves query heads j·r .. (j+1)·r.
        let repeat = |y: Tensor| -> candle_core::Result<Tensor> {
            if h == kv {
                return Ok(y);
            }
            y.unsqueeze(2)?
                .broadcast_as((b, kv, h / kv, t, dh))?
                .contiguous()?
                .reshape((b, h, t, dh))
        };
        let k = repeat(k).map_err(c)?;
        let v = repeat(v).map_err(c)?;
        let kt = k.transpose(2, 3).and_then(|y| y.contiguous()).map_err(c)?;
        let mask =
            Tensor::from_vec(causal_mask(t, a.sliding_window), (t, t), &self.device).map_err(c)?;
        let scores = (q.matmul(&kt).map_err(c)? * (1.0 / (dh as f64).sqrt()))
            .and_then(|s| s.broadcast_add(&mask))
            .map_err(c)?;
        let attn = softmax_last_dim(&scores).map_err(c)?;
        let attn = dropout(&attn, a.attention_dropout, mode, rng).map_err(c)?;
        let out = attn
            .matmul(&v)
            .and_then(|y| y.transpose(1, 2))
            .and_then(|y| y.contiguous())
            .and_then(|y| y.reshape((b, t, h * dh)))
            .map_err(c)?;
        proj(self, 3, &out, rng)
    }
}

/// The additive mask `[T, T]`: 0 where query i may see key j (j ≤ i, and within the
/// sliding window when there is one), f32::MIN elsewhere, as transformers adds it.
fn causal_mask(t: usize, window: Option<usize>) -> Vec<f32> {
    let mut m = vec![f32::MIN; t * t];
    for i in 0..t {
        let first = window.map_or(0, |w| (i + 1).saturating_sub(w));
        for j in first..=i {
            m[i * t + j] = 0.0;
        }
    }
    m
}

/// The inverse frequencies θ^(−2i/d), i < d/2, rescaled as `rope_scaling` says, in f32
/// as transformers computes them.
fn inv_freq(a: &AttentionConf) -> Vec<f32> {
    let d = a.head_dim;
    let base: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (a.rope_theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    match a.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => {
            base.iter().map(|&f| (f as f64 / factor) as f32).collect()
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: orig,
        }) => {
            let orig = orig as f64;
            let (low_wavelen, high_wavelen) = (orig / low, orig / high);
            base.iter()
                .map(|&f| {
                    let f = f as f64;
                    let wavelen = std::f64::consts::TAU / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    // Finite here, so this is transformers' ~(w < high) & ~(w > low).
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    if medium {
                        let smooth = (orig / wavelen - low) / (high - low);
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    } else {
                        scaled as f32
                    }
                })
                .collect()
        }
    }
}

/// cos and sin `[T, head_dim]` of positions 0..T: each half of a row is
/// position · inv_freq (transformers' `cat((freqs, freqs), -1)`).
fn rope_tables(a: &AttentionConf, t: usize) -> (Vec<f32>, Vec<f32>) {
    let f = inv_freq(a);
    let d = a.head_dim;
    let mut cos = Vec::with_capacity(t * d);
    let mut sin = Vec::with_capacity(t * d);
    for p in 0..t {
        for _half in 0..2 {
            for &g in &f {
                let angle = p as f32 * g;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_and_windowed() {
        let m = causal_mask(3, None);
        assert_eq!(m[0..3], [0.0, f32::MIN, f32::MIN]);
        assert_eq!(m[6..9], [0.0, 0.0, 0.0]);
        let w = causal_mask(4, Some(2));
        assert_eq!(w[12..16], [f32::MIN, f32::MIN, 0.0, 0.0]);
    }
}
