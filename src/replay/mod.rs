//! Experience replay: a fixed-capacity buffer of past examples that outlives the process.
//!
//! `ReservoirBuffer` keeps at most `capacity` examples of a stream it sees one example
//! at a time, by one of two policies:
//! - [`Policy::Reservoir`] — Vitter's Algorithm R: the n-th example seen is kept with
//!   probability C/n, replacing a uniformly chosen slot, so at any time the buffer is a
//!   uniform sample of everything seen. It follows the stream's class distribution.
//! - [`Policy::ClassBalanced`] — class-balanced reservoir sampling (CBRS, Chrysakis &
//!   Moens 2020): when full, an example of a class that is not "full" (is not and has never
//!   been the largest class in the buffer) replaces a random example of the largest class;
//!   an example of a full class `c` replaces a random example of its own class with
//!   probability m_c/n_c (stored over seen). Quotas converge to equal shares, and a class
//!   with fewer examples than its share keeps all of them.
//!
//! The buffer is a safetensors file: `input` `[size, ...]` (U8 when every example came
//! from U8 data, else F32), `target` I64 `[size]`, and `logits` F32 `[size, classes]` when
//! examples carry the model's outputs at insertion (dark experience replay). The metadata
//! keeps everything insertion depends on — examples seen (in all and per class), the
//! insertion RNG's state, capacity, policy, seed — so continuing a buffer over D2 after
//! D1 gives exactly the buffer of one pass over D1 then D2. Replay draws use a separate
//! RNG owned by the trainer, so they never disturb insertion.

use crate::checkpoint::{Checkpoint, Dtype, OwnedTensor};
use crate::data::Dataset;
use crate::error::{MnemoError, Result};
use crate::rng::Rng;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Metadata key marking a file as a replay buffer.
pub const KIND_KEY: &str = "mnemo.kind";
pub const KIND: &str = "replay-buffer";
pub const TOTAL_SEEN_KEY: &str = "mnemo.total_seen";
pub const CAPACITY_KEY: &str = "mnemo.capacity";
pub const POLICY_KEY: &str = "mnemo.policy";
pub const SEED_KEY: &str = "mnemo.buffer.seed";
pub const RNG_KEY: &str = "mnemo.buffer.rng";
pub const CLASS_SEEN_KEY: &str = "mnemo.class_seen";
pub const FULL_CLASSES_KEY: &str = "mnemo.full_classes";

/// How a full buffer chooses what to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Reservoir,
    ClassBalanced,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Reservoir => "reservoir",
            Policy::ClassBalanced => "class-balanced",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "reservoir" => Some(Policy::Reservoir),
            "class-balanced" => Some(Policy::ClassBalanced),
            _ => None,
        }
    }
}

/// A replay buffer in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct ReservoirBuffer {
    /// The file it was read from or will be written to (for messages).
    pub path: PathBuf,
    pub capacity: usize,
    pub policy: Policy,
    /// The seed the insertion RNG started from (kept for provenance).
    pub seed: u64,
    /// Shape of one example; `None` until the first example arrives.
    pub example_shape: Option<Vec<usize>>,
    /// Every stored example came from U8 data (values k/255): written back as U8.
    pub u8_inputs: bool,
    /// Stored inputs as f32, example-major.
    pub inputs: Vec<f32>,
    /// Class ids, one per slot (0 for every token sequence: a single "class").
    pub targets: Vec<i64>,
    /// `Some(T)` when the buffer holds token sequences: `labels` then holds each slot's T
    /// token labels (transformers' `labels`, -100 not scored) and `inputs` its token ids.
    pub sequence: Option<usize>,
    pub labels: Vec<i64>,
    /// Width of the stored logits, when examples carry them.
    pub classes: Option<usize>,
    pub logits: Vec<f32>,
    /// Examples offered so far, in all and per class.
    pub total_seen: u64,
    pub class_seen: BTreeMap<i64, u64>,
    /// Class-balanced policy: classes that are or have been the largest in a full buffer.
    pub full_classes: BTreeSet<i64>,
    rng: Rng,
    /// Stored examples per class (derived from `targets`, kept in step).
    counts: BTreeMap<i64, usize>,
}

fn bad(path: &Path, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidBuffer {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Seed of the insertion stream, apart from the trainer's shuffling stream.
const INSERT_SEED: u64 = 0x5EED_B0FF_E2A1_0001;

impl ReservoirBuffer {
    /// An empty buffer.
    pub fn new(path: impl Into<PathBuf>, capacity: usize, policy: Policy, seed: u64) -> Self {
        ReservoirBuffer {
            path: path.into(),
            capacity,
            policy,
            seed,
            example_shape: None,
            u8_inputs: true,
            inputs: Vec::new(),
            targets: Vec::new(),
            sequence: None,
            labels: Vec::new(),
            classes: None,
            logits: Vec::new(),
            total_seen: 0,
            class_seen: BTreeMap::new(),
            full_classes: BTreeSet::new(),
            rng: Rng::new(seed ^ INSERT_SEED),
            counts: BTreeMap::new(),
        }
    }

    /// Stored examples.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn example_len(&self) -> usize {
        self.example_shape
            .as_ref()
            .map_or(0, |s| s.iter().product())
    }

    /// Stored examples per class.
    pub fn histogram(&self) -> &BTreeMap<i64, usize> {
        &self.counts
    }

    pub fn has_logits(&self) -> bool {
        self.classes.is_some()
    }

    /// Checks that examples of `shape` (and logits of width `classes`, when given) fit.
    pub fn check_compatible(&self, shape: &[usize], from: &Path) -> Result<()> {
        match &self.example_shape {
            Some(s) if s != shape => Err(bad(
                &self.path,
                format!(
                    "holds examples of shape {s:?}, but {} has examples of shape {shape:?} \
                     (a buffer from another dataset or model?)",
                    from.display()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Offers one example of the stream to the buffer. `x` is its input (f32; `from_u8`
    /// when its values are k/255 from U8 data), `logits` the model's outputs for it when
    /// examples carry logits.
    pub fn offer(
        &mut self,
        x: &[f32],
        y: i64,
        from_u8: bool,
        logits: Option<&[f32]>,
    ) -> Result<()> {
        if self.sequence.is_some() {
            return Err(bad(
                &self.path,
                "holds token sequences; it cannot take class-labelled examples",
            ));
        }
        self.offer_example(x, y, None, from_u8, logits)
    }

    /// Offers one token sequence: its ids `x` and its `labels` (reservoir sampling; no
    /// classes to balance, no logits).
    pub fn offer_sequence(&mut self, x: &[f32], labels: &[i64]) -> Result<()> {
        match self.sequence {
            Some(t) if t != labels.len() => {
                return Err(bad(
                    &self.path,
                    format!(
                        "holds sequences of {t} tokens, offered one of {}",
                        labels.len()
                    ),
                ))
            }
            None if !self.is_empty() => {
                return Err(bad(
                    &self.path,
                    "holds class-labelled examples; it cannot take token sequences",
                ))
            }
            _ => {}
        }
        if self.policy != Policy::Reservoir {
            return Err(bad(
                &self.path,
                "token sequences have no classes to balance: use the reservoir policy",
            ));
        }
        self.sequence = Some(labels.len());
        self.offer_example(x, 0, Some(labels), false, None)
    }

    fn offer_example(
        &mut self,
        x: &[f32],
        y: i64,
        labels: Option<&[i64]>,
        from_u8: bool,
        logits: Option<&[f32]>,
    ) -> Result<()> {
        if let Some(l) = logits {
            match self.classes {
                Some(c) if c != l.len() => {
                    return Err(bad(
                        &self.path,
                        format!(
                            "stores logits of width {c}, but the model has {} outputs",
                            l.len()
                        ),
                    ))
                }
                None if !self.is_empty() => {
                    return Err(bad(
                        &self.path,
                        "its examples carry no logits (filled without distillation); \
                         start a new buffer to distill",
                    ))
                }
                _ => self.classes = Some(l.len()),
            }
        } else if self.classes.is_some() {
            return Err(bad(
                &self.path,
                "internal: an example without logits for a buffer that stores them",
            ));
        }
        if self.example_len() == 0 && self.example_shape.is_none() {
            return Err(bad(&self.path, "internal: the example shape is not set"));
        }
        if x.len() != self.example_len() {
            return Err(bad(&self.path, "internal: example size mismatch"));
        }
        self.total_seen += 1;
        let seen = {
            let s = self.class_seen.entry(y).or_insert(0);
            *s += 1;
            *s
        };
        let slot = if self.len() < self.capacity {
            None
        } else {
            match self.policy {
                Policy::Reservoir => {
                    let j = self.rng.below(self.total_seen) as usize;
                    if j >= self.capacity {
                        return Ok(());
                    }
                    Some(j)
                }
                Policy::ClassBalanced => {
                    if !self.full_classes.contains(&y) {
                        let max = self.counts.values().copied().max().unwrap_or(0);
                        let largest: Vec<i64> = self
                            .counts
                            .iter()
                            .filter(|(_, &n)| n == max)
                            .map(|(&c, _)| c)
                            .collect();
                        let c = largest[self.rng.below(largest.len() as u64) as usize];
                        let k = self.rng.below(max as u64) as usize;
                        Some(self.nth_of_class(c, k))
                    } else {
                        let stored = self.counts.get(&y).copied().unwrap_or(0);
                        if stored == 0 || self.rng.next_f64() * seen as f64 >= stored as f64 {
                            // Kept with probability m_c / n_c.
                            return Ok(());
                        }
                        let k = self.rng.below(stored as u64) as usize;
                        Some(self.nth_of_class(y, k))
                    }
                }
            }
        };
        let el = self.example_len();
        match slot {
            None => {
                self.inputs.extend_from_slice(x);
                self.targets.push(y);
                if let Some(l) = labels {
                    self.labels.extend_from_slice(l);
                }
                if let Some(l) = logits {
                    self.logits.extend_from_slice(l);
                }
            }
            Some(j) => {
                self.inputs[j * el..(j + 1) * el].copy_from_slice(x);
                if let Some(l) = labels {
                    self.labels[j * l.len()..(j + 1) * l.len()].copy_from_slice(l);
                }
                let old = std::mem::replace(&mut self.targets[j], y);
                if let Some(n) = self.counts.get_mut(&old) {
                    *n -= 1;
                    if *n == 0 {
                        self.counts.remove(&old);
                    }
                }
                if let (Some(l), Some(c)) = (logits, self.classes) {
                    self.logits[j * c..(j + 1) * c].copy_from_slice(l);
                }
            }
        }
        *self.counts.entry(y).or_insert(0) += 1;
        self.u8_inputs &= from_u8;
        if self.policy == Policy::ClassBalanced && self.len() == self.capacity {
            let max = self.counts.values().copied().max().unwrap_or(0);
            for (&c, &n) in &self.counts {
                if n == max {
                    self.full_classes.insert(c);
                }
            }
        }
        Ok(())
    }

    /// The slot of the `k`-th stored example of class `c`.
    fn nth_of_class(&self, c: i64, k: usize) -> usize {
        self.targets
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == c)
            .nth(k)
            .map(|(i, _)| i)
            .expect("class count in step with targets")
    }

    /// Fails when a stored label is not a class of a model (or head) with `classes` outputs,
    /// naming the buffer and the slot.
    pub fn check_labels(&self, classes: usize, head: Option<&str>) -> Result<()> {
        if let Some(t) = self.sequence {
            // Token ids and labels against the vocabulary (`classes` logits per position).
            let bad_label = self
                .labels
                .iter()
                .position(|&v| v != crate::data::IGNORE_TOKEN && v as u64 >= classes as u64);
            let bad_id = self.inputs.iter().position(|&v| v as u64 >= classes as u64);
            if let Some((what, i)) = bad_label
                .map(|i| ("'target'", i))
                .or(bad_id.map(|i| ("'input'", i)))
            {
                return Err(bad(
                    &self.path,
                    format!(
                        "{what} slot {} position {} is out of the vocabulary of {classes} tokens (a buffer from another model?)",
                        i / t,
                        i % t
                    ),
                ));
            }
            return Ok(());
        }
        if let Some((i, &t)) = self
            .targets
            .iter()
            .enumerate()
            .find(|(_, &t)| t < 0 || t as u64 >= classes as u64)
        {
            let which = head
                .map(|h| format!("head '{h}'"))
                .unwrap_or_else(|| "model".into());
            return Err(bad(
                &self.path,
                format!(
                    "'target'[{i}] = {t} is out of range: the {which} has {classes} outputs \
                     (a buffer from another model or task?)"
                ),
            ));
        }
        Ok(())
    }

    /// Sets the example shape on first use, or checks it.
    pub fn expect_shape(&mut self, shape: &[usize], from: &Path) -> Result<()> {
        self.check_compatible(shape, from)?;
        if self.example_shape.is_none() {
            self.example_shape = Some(shape.to_vec());
        }
        Ok(())
    }

    /// `n` distinct slots drawn uniformly (all of them, shuffled, when `n` ≥ len).
    pub fn draw(&self, n: usize, rng: &mut Rng) -> Vec<usize> {
        let len = self.len();
        let n = n.min(len);
        let mut idx: Vec<usize> = (0..len).collect();
        // Partial Fisher–Yates: the first n positions are a uniform sample.
        for i in 0..n {
            let j = i + rng.below((len - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(n);
        idx
    }

    /// The examples in slots `idx` as a dataset (a replay batch).
    pub fn to_dataset(&self, idx: &[usize]) -> Dataset {
        let el = self.example_len();
        Dataset {
            path: self.path.clone(),
            example_shape: self.example_shape.clone().unwrap_or_default(),
            inputs: idx
                .iter()
                .flat_map(|&i| self.inputs[i * el..(i + 1) * el].iter().copied())
                .collect(),
            targets: match self.sequence {
                Some(t) => idx
                    .iter()
                    .flat_map(|&i| self.labels[i * t..(i + 1) * t].iter().copied())
                    .collect(),
                None => idx.iter().map(|&i| self.targets[i]).collect(),
            },
            target_kind: match self.sequence {
                Some(t) => crate::data::TargetKind::Tokens { t },
                None => crate::data::TargetKind::Class,
            },
            from_u8: self.u8_inputs,
        }
    }

    /// Stored logits of the slots `idx`, row after row.
    pub fn logits_of(&self, idx: &[usize]) -> Option<Vec<f32>> {
        let c = self.classes?;
        Some(
            idx.iter()
                .flat_map(|&i| self.logits[i * c..(i + 1) * c].iter().copied())
                .collect(),
        )
    }

    /// The buffer as tensors (names prefixed, for embedding in a training state) and its
    /// metadata.
    pub fn to_parts(&self, prefix: &str) -> (Vec<OwnedTensor<'static>>, BTreeMap<String, String>) {
        let shape = self.example_shape.clone().unwrap_or_default();
        let mut full = vec![self.len()];
        full.extend(&shape);
        let input = if self.sequence.is_some() {
            OwnedTensor {
                name: format!("{prefix}input"),
                dtype: Dtype::I64,
                shape: full,
                data: Cow::Owned(
                    self.inputs
                        .iter()
                        .flat_map(|&v| (v as i64).to_le_bytes())
                        .collect(),
                ),
            }
        } else if self.u8_inputs {
            OwnedTensor {
                name: format!("{prefix}input"),
                dtype: Dtype::U8,
                shape: full,
                data: Cow::Owned(
                    self.inputs
                        .iter()
                        .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
                        .collect(),
                ),
            }
        } else {
            OwnedTensor::f32(format!("{prefix}input"), full, &self.inputs)
        };
        let mut tensors = vec![
            input,
            match self.sequence {
                Some(t) => OwnedTensor {
                    name: format!("{prefix}target"),
                    dtype: Dtype::I64,
                    shape: vec![self.len(), t],
                    data: Cow::Owned(self.labels.iter().flat_map(|t| t.to_le_bytes()).collect()),
                },
                None => OwnedTensor {
                    name: format!("{prefix}target"),
                    dtype: Dtype::I64,
                    shape: vec![self.len()],
                    data: Cow::Owned(self.targets.iter().flat_map(|t| t.to_le_bytes()).collect()),
                },
            },
        ];
        if let Some(c) = self.classes {
            tensors.push(OwnedTensor::f32(
                format!("{prefix}logits"),
                vec![self.len(), c],
                &self.logits,
            ));
        }
        let mut m = BTreeMap::new();
        m.insert(KIND_KEY.into(), KIND.into());
        m.insert(TOTAL_SEEN_KEY.into(), self.total_seen.to_string());
        m.insert(CAPACITY_KEY.into(), self.capacity.to_string());
        m.insert(POLICY_KEY.into(), self.policy.as_str().into());
        m.insert(SEED_KEY.into(), self.seed.to_string());
        let s = self.rng.state();
        m.insert(
            RNG_KEY.into(),
            s.iter()
                .map(|v| format!("{v:016x}"))
                .collect::<Vec<_>>()
                .join(""),
        );
        let seen: serde_json::Map<String, serde_json::Value> = self
            .class_seen
            .iter()
            .map(|(c, n)| (c.to_string(), (*n).into()))
            .collect();
        m.insert(
            CLASS_SEEN_KEY.into(),
            serde_json::Value::Object(seen).to_string(),
        );
        if self.policy == Policy::ClassBalanced {
            m.insert(
                FULL_CLASSES_KEY.into(),
                serde_json::to_string(&self.full_classes).expect("serialises"),
            );
        }
        (tensors, m)
    }

    /// Writes the buffer atomically, with `extra` metadata (provenance).
    pub fn write(&self, path: &Path, extra: &BTreeMap<String, String>) -> Result<()> {
        self.prepare(path, extra)?.commit()
    }

    /// [`Self::write`] into its temporary file, not yet in place (commit it).
    pub fn prepare(
        &self,
        path: &Path,
        extra: &BTreeMap<String, String>,
    ) -> Result<crate::checkpoint::AtomicFile> {
        let (tensors, mut meta) = self.to_parts("");
        for (k, v) in extra {
            meta.entry(k.clone()).or_insert_with(|| v.clone());
        }
        crate::checkpoint::prepare_checkpoint(path, tensors, &meta)
    }

    /// Reads a buffer file.
    pub fn open(path: &Path) -> Result<ReservoirBuffer> {
        let ckpt = Checkpoint::open(path)?;
        Self::from_checkpoint(&ckpt, "", path, ckpt.metadata())
    }

    /// Reads a buffer from tensors `<prefix>input`, ... of `ckpt` and the buffer keys of
    /// `meta`, refusing anything inconsistent.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        prefix: &str,
        path: &Path,
        meta: &BTreeMap<String, String>,
    ) -> Result<ReservoirBuffer> {
        if meta.get(KIND_KEY).map(String::as_str) != Some(KIND) {
            return Err(bad(
                path,
                format!("not a replay buffer (metadata '{KIND_KEY}' is not '{KIND}')"),
            ));
        }
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(path, format!("metadata '{k}' is missing")))
        };
        let num = |k: &str| -> Result<u64> {
            get(k)?.parse().map_err(|_| {
                bad(
                    path,
                    format!("metadata '{k}' is not a non-negative integer"),
                )
            })
        };
        let capacity = num(CAPACITY_KEY)? as usize;
        let total_seen = num(TOTAL_SEEN_KEY)?;
        let seed = num(SEED_KEY)?;
        let policy = Policy::parse(get(POLICY_KEY)?)
            .ok_or_else(|| bad(path, format!("unknown policy '{}'", meta[POLICY_KEY])))?;
        let rng_hex = get(RNG_KEY)?;
        let rng_state = (rng_hex.len() == 64)
            .then(|| {
                let mut s = [0u64; 4];
                for (i, v) in s.iter_mut().enumerate() {
                    *v = u64::from_str_radix(rng_hex.get(i * 16..(i + 1) * 16)?, 16).ok()?;
                }
                Some(s)
            })
            .flatten()
            .filter(|s| s.iter().any(|&v| v != 0))
            .ok_or_else(|| {
                bad(
                    path,
                    format!("metadata '{RNG_KEY}' is not a valid RNG state"),
                )
            })?;
        let class_seen: BTreeMap<String, u64> = serde_json::from_str(get(CLASS_SEEN_KEY)?)
            .map_err(|e| bad(path, format!("metadata '{CLASS_SEEN_KEY}': {e}")))?;
        let class_seen: BTreeMap<i64, u64> = class_seen
            .into_iter()
            .map(|(k, v)| {
                k.parse::<i64>().map(|k| (k, v)).map_err(|_| {
                    bad(
                        path,
                        format!("metadata '{CLASS_SEEN_KEY}': bad class '{k}'"),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let full_classes: BTreeSet<i64> = match meta.get(FULL_CLASSES_KEY) {
            Some(s) => serde_json::from_str(s)
                .map_err(|e| bad(path, format!("metadata '{FULL_CLASSES_KEY}': {e}")))?,
            None => BTreeSet::new(),
        };
        let (xn, tn, ln) = (
            format!("{prefix}input"),
            format!("{prefix}target"),
            format!("{prefix}logits"),
        );
        let xi = ckpt.entry(&xn)?;
        let ti = ckpt.entry(&tn)?;
        // Token sequences: integer ids [n, T] and labels [n, T].
        let sequence = (ti.shape.len() == 2).then(|| ti.shape[1]);
        if let Some(t) = sequence {
            if xi.shape != [ti.shape[0], t] || xi.dtype.is_float() || xi.dtype == Dtype::U8 {
                return Err(bad(
                    path,
                    format!(
                        "'{tn}' {:?} holds token labels, so '{xn}' must be integer token ids of the same shape (it is {} {:?})",
                        ti.shape, xi.dtype, xi.shape
                    ),
                ));
            }
        }
        if xi.shape.is_empty()
            || (sequence.is_none() && ti.shape.len() != 1)
            || ti.shape[0] != xi.shape[0]
        {
            return Err(bad(
                path,
                format!(
                    "'{xn}' {:?} and '{tn}' {:?} do not hold the same number of examples",
                    xi.shape, ti.shape
                ),
            ));
        }
        let n = xi.shape[0];
        if n > capacity {
            return Err(bad(
                path,
                format!("holds {n} examples, over its capacity {capacity}"),
            ));
        }
        if (n as u64) > total_seen {
            return Err(bad(
                path,
                format!("holds {n} examples but has seen only {total_seen}"),
            ));
        }
        let (inputs, u8_inputs) = match xi.dtype {
            _ if sequence.is_some() => {
                let ids = ckpt.to_i64(&xn)?;
                if let Some((i, v)) = ids
                    .iter()
                    .enumerate()
                    .find(|(_, &v)| v < 0 || v as usize >= crate::arch::MAX_TOKEN_ID)
                {
                    return Err(bad(
                        path,
                        format!("'{xn}' element {i} = {v} is not a token id"),
                    ));
                }
                (ids.iter().map(|&v| v as f32).collect(), false)
            }
            Dtype::U8 => (
                ckpt.bytes(&xn)?.iter().map(|&b| b as f32 / 255.0).collect(),
                true,
            ),
            Dtype::F32 => (ckpt.to_f32(&xn)?, false),
            d => {
                return Err(MnemoError::WrongDtype {
                    path: path.to_path_buf(),
                    tensor: xn,
                    dtype: d.to_string(),
                    expected: "U8 or F32".into(),
                })
            }
        };
        if let Some(i) = inputs.iter().position(|v: &f32| !v.is_finite()) {
            return Err(bad(path, format!("'{xn}' element {i} is not finite")));
        }
        let (targets, labels) = match sequence {
            Some(_) => {
                let labels = ckpt.to_i64(&tn)?;
                if let Some((i, v)) = labels.iter().enumerate().find(|(_, &v)| {
                    v != crate::data::IGNORE_TOKEN
                        && (v < 0 || v as usize >= crate::arch::MAX_TOKEN_ID)
                }) {
                    return Err(bad(
                        path,
                        format!("'{tn}' element {i} = {v} is neither a token id nor -100"),
                    ));
                }
                (vec![0; n], labels)
            }
            None => (ckpt.to_i64(&tn)?, Vec::new()),
        };
        if sequence.is_some() && policy != Policy::Reservoir {
            return Err(bad(
                path,
                "a buffer of token sequences uses the reservoir policy",
            ));
        }
        if let Some((i, t)) = targets.iter().enumerate().find(|(_, &t)| t < 0) {
            return Err(bad(path, format!("'{tn}'[{i}] = {t} is negative")));
        }
        let mut counts = BTreeMap::new();
        for &t in &targets {
            *counts.entry(t).or_insert(0usize) += 1;
        }
        for (c, &m) in &counts {
            if class_seen.get(c).copied().unwrap_or(0) < m as u64 {
                return Err(bad(
                    path,
                    format!("stores {m} examples of class {c} but '{CLASS_SEEN_KEY}' says fewer were seen"),
                ));
            }
        }
        let (classes, logits) = if ckpt.contains(&ln) {
            let li = ckpt.entry(&ln)?;
            if li.shape.len() != 2 || li.shape[0] != n || li.shape[1] == 0 {
                return Err(bad(
                    path,
                    format!("'{ln}' has shape {:?}; expected [{n}, classes]", li.shape),
                ));
            }
            let l = ckpt.to_f32(&ln)?;
            if let Some(i) = l.iter().position(|v| !v.is_finite()) {
                return Err(bad(path, format!("'{ln}' element {i} is not finite")));
            }
            (Some(li.shape[1]), l)
        } else {
            (None, Vec::new())
        };
        // An empty buffer written before any example arrived has no example shape.
        let example_shape = (n > 0 || xi.shape.len() > 1).then(|| xi.shape[1..].to_vec());
        Ok(ReservoirBuffer {
            path: path.to_path_buf(),
            capacity,
            policy,
            seed,
            example_shape,
            u8_inputs,
            inputs,
            targets,
            sequence,
            labels,
            classes,
            logits,
            total_seen,
            class_seen,
            full_classes,
            rng: Rng::from_state(rng_state),
            counts,
        })
    }

    /// A JSON summary: size, capacity, examples seen, policy and the per-class histogram.
    pub fn summary(&self) -> serde_json::Value {
        let classes: serde_json::Map<String, serde_json::Value> = self
            .counts
            .iter()
            .map(|(c, n)| (c.to_string(), (*n).into()))
            .collect();
        serde_json::json!({
            "size": self.len(), "capacity": self.capacity, "total_seen": self.total_seen,
            "policy": self.policy.as_str(), "classes": classes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(buf: &mut ReservoirBuffer, labels: &[i64]) {
        buf.expect_shape(&[1], Path::new("stream")).unwrap();
        for (i, &y) in labels.iter().enumerate() {
            buf.offer(&[i as f32], y, false, None).unwrap();
        }
    }

    /// Algorithm R keeps every example of the stream with probability C/N: the inclusion
    /// counts over many seeded runs pass a chi-square test of uniformity.
    #[test]
    fn reservoir_is_uniform() {
        let (n, c, runs) = (100usize, 10usize, 4000u64);
        let mut hits = vec![0u64; n];
        for seed in 0..runs {
            let mut b = ReservoirBuffer::new("b", c, Policy::Reservoir, seed);
            feed(&mut b, &vec![0; n]);
            assert_eq!(b.len(), c);
            for &x in &b.inputs {
                hits[x as usize] += 1;
            }
        }
        let expected = (runs as usize * c) as f64 / n as f64;
        let chi2: f64 = hits
            .iter()
            .map(|&h| (h as f64 - expected).powi(2) / expected)
            .sum();
        // 99 degrees of freedom: the 0.999 quantile is 148.2.
        assert!(chi2 < 148.2, "chi-square {chi2:.1} over {n} positions");
        // And the test can fail: keeping the first C examples is far from uniform.
        let mut biased = vec![0u64; n];
        biased[..c].iter_mut().for_each(|h| *h = runs);
        let chi2b: f64 = biased
            .iter()
            .map(|&h| (h as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2b > 148.2);
    }

    #[test]
    fn continuing_a_buffer_equals_one_pass() {
        let labels: Vec<i64> = (0..500).map(|i| (i * 7 % 5) as i64).collect();
        for policy in [Policy::Reservoir, Policy::ClassBalanced] {
            let mut one = ReservoirBuffer::new("b", 37, policy, 9);
            feed(&mut one, &labels);
            let mut two = ReservoirBuffer::new("b", 37, policy, 9);
            two.expect_shape(&[1], Path::new("s")).unwrap();
            for (i, &y) in labels.iter().enumerate().take(180) {
                two.offer(&[i as f32], y, false, None).unwrap();
            }
            // Through a file, as two invocations would.
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("buf.safetensors");
            two.write(&p, &BTreeMap::new()).unwrap();
            let mut two = ReservoirBuffer::open(&p).unwrap();
            for (i, &y) in labels.iter().enumerate().skip(180) {
                two.offer(&[i as f32], y, false, None).unwrap();
            }
            two.path = one.path.clone();
            assert_eq!(one, two, "{policy:?}");
        }
    }

    /// CBRS: with a skewed stream, classes with enough examples get equal shares and
    /// rare classes keep all of theirs (water-filling: 400 = 125 + 125 + 100 + 50).
    #[test]
    fn class_balanced_quotas() {
        let mut labels: Vec<i64> = [(0, 5000), (1, 800), (2, 100), (3, 50)]
            .iter()
            .flat_map(|&(c, n)| std::iter::repeat_n(c, n))
            .collect();
        Rng::new(1).shuffle(&mut labels);
        let mut b = ReservoirBuffer::new("b", 400, Policy::ClassBalanced, 3);
        feed(&mut b, &labels);
        let h = b.histogram();
        assert_eq!(h[&3], 50);
        assert_eq!(h[&2], 100);
        assert!(
            h[&0].abs_diff(125) <= 1 && h[&1].abs_diff(125) <= 1,
            "{h:?}"
        );
        // The plain reservoir follows the stream instead.
        let mut r = ReservoirBuffer::new("b", 400, Policy::Reservoir, 3);
        feed(&mut r, &labels);
        assert!(r.histogram()[&0] > 250, "{:?}", r.histogram());
    }

    #[test]
    fn u8_inputs_round_trip_and_logits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.safetensors");
        let mut b = ReservoirBuffer::new(&p, 3, Policy::Reservoir, 0);
        b.expect_shape(&[2], Path::new("d")).unwrap();
        for i in 0..5u8 {
            let x = [i as f32 / 255.0, (200 + i) as f32 / 255.0];
            b.offer(&x, i as i64 % 2, true, Some(&[i as f32, -1.0, 0.5]))
                .unwrap();
        }
        b.write(&p, &BTreeMap::new()).unwrap();
        let c = Checkpoint::open(&p).unwrap();
        assert_eq!(c.entry("input").unwrap().dtype, Dtype::U8);
        assert_eq!(c.entry("logits").unwrap().shape, vec![3, 3]);
        let back = ReservoirBuffer::open(&p).unwrap();
        assert_eq!(back, b);
        // Logits of another width are refused, naming the buffer.
        let mut b2 = back.clone();
        let e = b2.offer(&[0.0, 0.0], 0, true, Some(&[1.0])).unwrap_err();
        assert!(e.to_string().contains("b.safetensors"), "{e}");
    }
}
