//! The per-tensor engine. A tensor is processed in chunks of [`CHUNK`]
//! elements: at most one chunk of every input is decoded at a time (per
//! thread), so memory does not grow with the tensor times the number of
//! models. Methods that need tensor-wide statistics (norms, dot products,
//! magnitude ranks, L1 sums) make a first pass for them: f64 partial sums per
//! chunk, added in chunk order, so the result does not depend on threads.

use super::dare;
use super::select::{self, asc_key, desc_key, Sel};
use super::{DareRescale, Plan, Sparsify};
use crate::checkpoint::{decode_into, Dtype};
use crate::error::MnemoError;
use half::{bf16, f16};
use rayon::prelude::*;
use serde::Serialize;
use std::path::PathBuf;

/// Elements per chunk; equal to DARE's mask block so that a chunk is one stream.
pub(crate) const CHUNK: usize = dare::DARE_BLOCK;

/// Where one input tensor's values come from.
#[derive(Clone, Copy)]
pub(crate) enum Src<'a> {
    F32(&'a [f32]),
    /// Raw little-endian bytes of a float tensor (e.g. from a memory map).
    Raw(Dtype, &'a [u8]),
}

impl Src<'_> {
    fn read(&self, start: usize, out: &mut [f32]) {
        match *self {
            Src::F32(s) => out.copy_from_slice(&s[start..start + out.len()]),
            Src::Raw(d, b) => {
                let sz = d.size();
                decode_into(d, &b[start * sz..(start + out.len()) * sz], out)
            }
        }
    }
}

/// One tensor to merge.
pub(crate) struct Job<'a> {
    /// The tensor name (seeds DARE's streams).
    pub name: &'a str,
    /// Element count.
    pub len: usize,
    pub inputs: Vec<Src<'a>>,
    pub base: Option<Src<'a>>,
    /// Fisher merging: one per input, or empty (→ weighted average).
    pub fishers: Vec<Src<'a>>,
    /// Fisher merging: the divisor of each input's coefficient (1 unless normalising).
    pub fisher_norms: Vec<f64>,
    pub check_finite: bool,
}

/// Which tensor a non-finite value was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Input(usize),
    Base,
    Fisher(usize),
    Output,
}

/// A NaN/inf found in an input, or a merged value that is not representable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NonFiniteAt {
    pub which: Which,
    pub index: usize,
    pub value: f32,
    /// The output dtype the (finite) value overflowed.
    pub overflow: Option<Dtype>,
}

impl NonFiniteAt {
    pub(crate) fn into_error(self, path: PathBuf, tensor: &str) -> MnemoError {
        let reason = match (self.which, self.overflow) {
            (Which::Output, Some(d)) => format!("the merged value overflows {d}"),
            (Which::Output, None) => "the merged value is not finite".to_string(),
            _ => "refusing to merge a non-finite value (allow_nonfinite lets NaN/inf through)"
                .to_string(),
        };
        MnemoError::NonFinite {
            path,
            tensor: tensor.to_string(),
            index: self.index,
            value: self.value,
            reason,
        }
    }
}

/// Where the merged values go: f32 values, or encoded bytes of a float dtype.
pub(crate) enum Sink<'a> {
    F32(&'a mut [f32]),
    Bytes(Dtype, &'a mut [u8]),
}

/// What the kernel learnt about one tensor, for the report (fields a method does not set are absent).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TensorStats {
    /// Sparsifying methods (TIES, DARE, breadcrumbs): fraction of task-vector
    /// entries kept, over all inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<f64>,
    /// Sign election: fraction of the non-zero weighted entries that agree with
    /// the elected sign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agree: Option<f64>,
    /// slerp: cos Ω between the two inputs; model_stock: the mean cosine between task vectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cos: Option<f64>,
    /// slerp: whether it fell back to linear interpolation (|cos Ω| > 0.9995).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lerp: Option<bool>,
    /// model_stock: the interpolation factor t towards the average.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t: Option<f64>,
}

/// Tensor-wide quantities computed before the element-wise pass.
#[derive(Default)]
struct Prep {
    /// Task-vector methods: per input, the selection and the rescaling factor.
    sel: Vec<Sel>,
    scale: Vec<f64>,
    seed: u64,
    /// Fisher: per-input coefficients.
    coefs: Vec<f64>,
    /// slerp: coefficients of the two inputs; model_stock: t.
    ca: f64,
    cb: f64,
    t: f64,
    stats: TensorStats,
}

/// The count of chunks of a tensor.
fn chunks(len: usize) -> usize {
    len.div_ceil(CHUNK)
}

fn chunk_len(len: usize, c: usize) -> usize {
    CHUNK.min(len - c * CHUNK)
}

/// Per-chunk f64 partial results of `f`, in chunk order (deterministic sums).
fn partials<T: Send>(len: usize, f: impl Fn(usize, usize, usize) -> T + Sync) -> Vec<T> {
    (0..chunks(len))
        .into_par_iter()
        .map(|c| f(c, c * CHUNK, chunk_len(len, c)))
        .collect()
}

/// Fills `keys` with the key of every |θᵢ − base| of input `i`.
fn fill_keys(job: &Job, i: usize, keys: &mut [u64], key: fn(f32, usize) -> u64) {
    let base = job.base.expect("task-vector methods have a base");
    keys.par_chunks_mut(CHUNK).enumerate().for_each(|(c, k)| {
        let start = c * CHUNK;
        let mut x = vec![0f32; k.len()];
        let mut b = vec![0f32; k.len()];
        job.inputs[i].read(start, &mut x);
        base.read(start, &mut b);
        for (j, slot) in k.iter_mut().enumerate() {
            *slot = key((x[j] - b[j]).abs(), start + j);
        }
    });
}

fn prepare(plan: &Plan, job: &Job) -> Prep {
    let n = job.inputs.len();
    let mut prep = Prep::default();
    match plan {
        Plan::Linear { .. } => {}
        Plan::Fisher {
            weights, normalize, ..
        } => {
            prep.coefs = (0..n)
                .map(|i| {
                    if *normalize {
                        weights[i] / job.fisher_norms[i]
                    } else {
                        weights[i]
                    }
                })
                .collect();
        }
        Plan::TaskVectors { sparsify, .. } => {
            let mut keys: Vec<u64> = Vec::new();
            for (i, &thin) in sparsify.iter().enumerate().take(n) {
                let (sel, scale) = match thin {
                    Sparsify::None => (Sel::All, 1.0),
                    Sparsify::Magnitude { density } => (
                        select::top_k(density, job.len, &mut keys, |k| {
                            fill_keys(job, i, k, desc_key)
                        }),
                        1.0,
                    ),
                    Sparsify::Outliers { density, gamma } => (
                        select::outliers(density, gamma, job.len, &mut keys, |k| {
                            fill_keys(job, i, k, asc_key)
                        }),
                        1.0,
                    ),
                    Sparsify::Random {
                        density,
                        rescale,
                        seed,
                    } => {
                        prep.seed = seed;
                        if density >= 1.0 {
                            (Sel::All, 1.0)
                        } else if density <= 0.0 {
                            (Sel::Nothing, 1.0)
                        } else {
                            let scale = match rescale {
                                DareRescale::Paper => 1.0 / density,
                                DareRescale::None => 1.0,
                                DareRescale::L1 => l1_rescale(job, i, density, seed),
                            };
                            (Sel::Bernoulli { density }, scale)
                        }
                    }
                };
                prep.sel.push(sel);
                prep.scale.push(scale);
            }
        }
        Plan::Slerp { t } => {
            let (a, b) = (job.inputs[0], job.inputs[1]);
            let parts = partials(job.len, |_, start, m| {
                let mut x = vec![0f32; m];
                let mut y = vec![0f32; m];
                a.read(start, &mut x);
                b.read(start, &mut y);
                x.iter().zip(&y).fold([0f64; 3], |[aa, bb, ab], (&p, &q)| {
                    let (p, q) = (p as f64, q as f64);
                    [aa + p * p, bb + q * q, ab + p * q]
                })
            });
            let [aa, bb, ab] = parts
                .iter()
                .fold([0f64; 3], |s, p| [s[0] + p[0], s[1] + p[1], s[2] + p[2]]);
            const EPS: f64 = 1e-8;
            let norm = |s: f64| {
                let r = s.sqrt();
                if r > EPS {
                    r
                } else {
                    1.0
                }
            };
            let dot = (ab / (norm(aa) * norm(bb))).clamp(-1.0, 1.0);
            let lerp = dot.abs() > 0.9995;
            if lerp {
                prep.ca = 1.0 - t;
                prep.cb = *t;
            } else {
                let omega = dot.acos();
                let s = omega.sin();
                prep.ca = ((1.0 - t) * omega).sin() / s;
                prep.cb = (t * omega).sin() / s;
            }
            prep.stats.cos = Some(dot);
            prep.stats.lerp = Some(lerp);
        }
        Plan::ModelStock => {
            let base = job.base.expect("model_stock has a base");
            let parts = partials(job.len, |_, start, m| {
                let mut b = vec![0f32; m];
                base.read(start, &mut b);
                let mut offs = vec![0f32; n * m];
                for i in 0..n {
                    let o = &mut offs[i * m..(i + 1) * m];
                    job.inputs[i].read(start, o);
                    o.iter_mut().zip(&b).for_each(|(v, &bv)| *v -= bv);
                }
                let mut g = vec![0f64; n * n];
                for i in 0..n {
                    for k in i..n {
                        let (p, q) = (&offs[i * m..(i + 1) * m], &offs[k * m..(k + 1) * m]);
                        g[i * n + k] = p.iter().zip(q).map(|(&u, &v)| u as f64 * v as f64).sum();
                    }
                }
                g
            });
            let mut g = vec![0f64; n * n];
            for p in &parts {
                g.iter_mut().zip(p).for_each(|(s, v)| *s += v);
            }
            let mut cos_sum = 0.0;
            let mut pairs = 0usize;
            for i in 0..n {
                for k in i + 1..n {
                    let np = (g[i * n + i].sqrt() * g[k * n + k].sqrt()).max(1e-6);
                    cos_sum += (g[i * n + k] / np).clamp(-1.0, 1.0);
                    pairs += 1;
                }
            }
            let cos = cos_sum / pairs as f64;
            let k = n as f64;
            let den = 1.0 + (k - 1.0) * cos;
            prep.t = if den.abs() < 1e-6 { 0.0 } else { k * cos / den };
            prep.stats.cos = Some(cos);
            prep.stats.t = Some(prep.t);
        }
    }
    prep
}

/// Σ x² of a whole tensor in f64, chunk partials added in order.
pub(crate) fn sum_squares(src: Src, len: usize) -> f64 {
    partials(len, |_, start, m| {
        let mut x = vec![0f32; m];
        src.read(start, &mut x);
        x.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
    })
    .iter()
    .sum()
}

/// mergekit's L1 rescaling factor ‖δ‖₁ / ‖m⊙δ‖₁ for DARE (1 when either is < 1e-7).
fn l1_rescale(job: &Job, i: usize, density: f64, seed: u64) -> f64 {
    let base = job.base.expect("dare has a base");
    let parts = partials(job.len, |c, start, m| {
        let mut x = vec![0f32; m];
        let mut b = vec![0f32; m];
        job.inputs[i].read(start, &mut x);
        base.read(start, &mut b);
        let mut rng = dare::block_rng(seed, job.name, i, c);
        let (mut before, mut after) = (0f64, 0f64);
        for j in 0..m {
            let d = (x[j] - b[j]).abs() as f64;
            before += d;
            if dare::keep(&mut rng, density) {
                after += d;
            }
        }
        (before, after)
    });
    let (before, after) = parts
        .iter()
        .fold((0.0, 0.0), |(s, t), (b, a)| (s + b, t + a));
    if before < 1e-7 || after < 1e-7 {
        1.0
    } else {
        before / after
    }
}

/// What one chunk's element pass reports.
#[derive(Default)]
struct ChunkOut {
    err: Option<NonFiniteAt>,
    kept: u64,
    agree: u64,
    nonzero: u64,
}

fn first_nonfinite(v: &[f32], start: usize, which: Which) -> Option<NonFiniteAt> {
    v.iter().position(|x| !x.is_finite()).map(|j| NonFiniteAt {
        which,
        index: start + j,
        value: v[j],
        overflow: None,
    })
}

/// The element-wise pass over chunk `c` (starting at element `start`) into `out`.
fn compute_chunk(plan: &Plan, prep: &Prep, job: &Job, c: usize, out: &mut [f32]) -> ChunkOut {
    let n = job.inputs.len();
    let m = out.len();
    let start = c * CHUNK;
    let mut res = ChunkOut::default();
    let mut xs = vec![0f32; n * m];
    for (i, src) in job.inputs.iter().enumerate() {
        src.read(start, &mut xs[i * m..(i + 1) * m]);
    }
    let mut bs = Vec::new();
    if let Some(b) = job.base {
        bs = vec![0f32; m];
        b.read(start, &mut bs);
    }
    let mut fs = Vec::new();
    if !job.fishers.is_empty() {
        fs = vec![0f32; n * m];
        for (i, src) in job.fishers.iter().enumerate() {
            src.read(start, &mut fs[i * m..(i + 1) * m]);
        }
    }
    if job.check_finite {
        let found = (0..n)
            .find_map(|i| first_nonfinite(&xs[i * m..(i + 1) * m], start, Which::Input(i)))
            .or_else(|| first_nonfinite(&bs, start, Which::Base))
            .or_else(|| {
                (0..job.fishers.len())
                    .find_map(|i| first_nonfinite(&fs[i * m..(i + 1) * m], start, Which::Fisher(i)))
            });
        if found.is_some() {
            res.err = found;
            return res;
        }
    }
    let x = |i: usize, j: usize| xs[i * m + j] as f64;
    match plan {
        Plan::Linear { weights, normalize } => {
            let div = if *normalize {
                weights.iter().sum()
            } else {
                1.0
            };
            // Input-major, contiguous loops (they vectorise); the same summation order as
            // Σ_i wᵢxᵢ per element, so the bytes are those of the element-major form.
            let mut acc = vec![0f64; m];
            for (i, &w) in weights.iter().enumerate().take(n) {
                for (a, &v) in acc.iter_mut().zip(&xs[i * m..(i + 1) * m]) {
                    *a += w * v as f64;
                }
            }
            if *normalize {
                out.iter_mut()
                    .zip(&acc)
                    .for_each(|(o, a)| *o = (a / div) as f32);
            } else {
                out.iter_mut().zip(&acc).for_each(|(o, a)| *o = *a as f32);
            }
        }
        Plan::Fisher {
            weights,
            eps,
            floor,
            ..
        } => {
            if fs.is_empty() {
                let div: f64 = weights.iter().sum();
                for (j, o) in out.iter_mut().enumerate() {
                    let acc: f64 = (0..n).map(|i| weights[i] * x(i, j)).sum();
                    *o = (acc / div) as f32;
                }
            } else {
                for (j, o) in out.iter_mut().enumerate() {
                    let (mut num, mut den) = (0f64, 0f64);
                    for i in 0..n {
                        let f = fs[i * m + j] as f64;
                        let f = floor.map_or(f, |fl| f.max(fl));
                        let cf = prep.coefs[i] * f;
                        num += cf * x(i, j);
                        den += cf;
                    }
                    *o = (num / (den + eps)) as f32;
                }
            }
        }
        Plan::TaskVectors {
            weights,
            lambda,
            normalize,
            elect_sign,
            ..
        } => {
            // eᵢ = wᵢ · scaleᵢ · keepᵢ · δᵢ for every input, then the combination.
            let mut e = vec![0f64; n * m];
            for i in 0..n {
                let (w, scale) = (weights[i], prep.scale[i]);
                let ei = &mut e[i * m..(i + 1) * m];
                let xi = &xs[i * m..(i + 1) * m];
                match prep.sel[i] {
                    Sel::Nothing => {}
                    Sel::Bernoulli { density } => {
                        let mut rng = dare::block_rng(prep.seed, job.name, i, c);
                        for j in 0..m {
                            if dare::keep(&mut rng, density) {
                                res.kept += 1;
                                ei[j] = w * ((xi[j] - bs[j]) as f64 * scale);
                            }
                        }
                    }
                    sel => {
                        for j in 0..m {
                            let d = xi[j] - bs[j];
                            if sel.keeps(d.abs(), start + j) {
                                res.kept += 1;
                                ei[j] = w * (d as f64 * scale);
                            }
                        }
                    }
                }
            }
            let lin_div = {
                let s: f64 = weights.iter().sum();
                if s.abs() < 1e-8 {
                    1.0
                } else {
                    s
                }
            };
            for (j, o) in out.iter_mut().enumerate() {
                let mut mixed;
                if *elect_sign {
                    let total: f64 = (0..n).map(|i| e[i * m + j]).sum();
                    let positive = total >= 0.0;
                    mixed = 0.0;
                    let mut div = 0.0;
                    for (i, w) in weights.iter().enumerate() {
                        let v = e[i * m + j];
                        if v != 0.0 {
                            res.nonzero += 1;
                        }
                        if (positive && v > 0.0) || (!positive && v < 0.0) {
                            res.agree += 1;
                            mixed += v;
                            div += w;
                        }
                    }
                    if *normalize {
                        mixed /= if div == 0.0 { 1.0 } else { div };
                    }
                } else {
                    mixed = (0..n).map(|i| e[i * m + j]).sum();
                    if *normalize {
                        mixed /= lin_div;
                    }
                }
                *o = (bs[j] as f64 + lambda * mixed) as f32;
            }
        }
        Plan::Slerp { .. } => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = (prep.ca * x(0, j) + prep.cb * x(1, j)) as f32;
            }
        }
        Plan::ModelStock => {
            let t = prep.t;
            for (j, o) in out.iter_mut().enumerate() {
                let avg = (0..n).map(|i| x(i, j)).sum::<f64>() / n as f64;
                *o = (t * avg + (1.0 - t) * bs[j] as f64) as f32;
            }
        }
    }
    if job.check_finite {
        res.err = first_nonfinite(out, start, Which::Output);
    }
    res
}

/// Encodes `vals` as `dtype` into `out`; returns the first finite value that overflowed.
pub(crate) fn encode_chunk(
    dtype: Dtype,
    vals: &[f32],
    out: &mut [u8],
    start: usize,
) -> Option<NonFiniteAt> {
    let mut overflow = None;
    let mut note = |j: usize, v: f32, inf: bool| {
        if inf && v.is_finite() && overflow.is_none() {
            overflow = Some(NonFiniteAt {
                which: Which::Output,
                index: start + j,
                value: v,
                overflow: Some(dtype),
            });
        }
    };
    match dtype {
        Dtype::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(vals) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::F64 => {
            for (c, v) in out.chunks_exact_mut(8).zip(vals) {
                c.copy_from_slice(&(*v as f64).to_le_bytes());
            }
        }
        Dtype::F16 => {
            for (j, (c, &v)) in out.chunks_exact_mut(2).zip(vals).enumerate() {
                let h = f16::from_f32(v);
                note(j, v, h.is_infinite());
                c.copy_from_slice(&h.to_le_bytes());
            }
        }
        Dtype::BF16 => {
            for (j, (c, &v)) in out.chunks_exact_mut(2).zip(vals).enumerate() {
                let h = bf16::from_f32(v);
                note(j, v, h.is_infinite());
                c.copy_from_slice(&h.to_le_bytes());
            }
        }
        other => unreachable!("output dtype {other} is refused before merging"),
    }
    overflow
}

/// Whether the kernel can write `dtype`.
pub(crate) fn writable(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16)
}

/// Merges one tensor into `sink`. Errors are the first non-finite value in chunk order.
pub(crate) fn run(plan: &Plan, job: &Job, sink: Sink) -> Result<TensorStats, NonFiniteAt> {
    let prep = prepare(plan, job);
    let outs: Vec<ChunkOut> = match sink {
        Sink::F32(out) => {
            debug_assert_eq!(out.len(), job.len);
            out.par_chunks_mut(CHUNK)
                .enumerate()
                .map(|(c, o)| compute_chunk(plan, &prep, job, c, o))
                .collect()
        }
        Sink::Bytes(dtype, out) => {
            debug_assert_eq!(out.len(), job.len * dtype.size());
            out.par_chunks_mut(CHUNK * dtype.size())
                .enumerate()
                .map(|(c, o)| {
                    let mut vals = vec![0f32; o.len() / dtype.size()];
                    let mut r = compute_chunk(plan, &prep, job, c, &mut vals);
                    let overflow = encode_chunk(dtype, &vals, o, c * CHUNK);
                    if r.err.is_none() && job.check_finite {
                        r.err = overflow;
                    }
                    r
                })
                .collect()
        }
    };
    if let Some(e) = outs.iter().find_map(|o| o.err) {
        return Err(e);
    }
    let mut stats = prep.stats;
    if let Plan::TaskVectors {
        sparsify,
        elect_sign,
        ..
    } = plan
    {
        let total = (job.len * job.inputs.len()) as f64;
        if sparsify.iter().any(|s| *s != Sparsify::None) && total > 0.0 {
            stats.kept = Some(outs.iter().map(|o| o.kept).sum::<u64>() as f64 / total);
        }
        let nonzero: u64 = outs.iter().map(|o| o.nonzero).sum();
        if *elect_sign && nonzero > 0 {
            stats.agree = Some(outs.iter().map(|o| o.agree).sum::<u64>() as f64 / nonzero as f64);
        }
    }
    Ok(stats)
}
