//! `mnemo online`: a long-running learner over a stream of examples (stdin or a FIFO):
//! each chunk is scored (prequential: predict, then train) and then learned from, an EMA
//! of the weights is kept beside the live model, and both are checkpointed atomically
//! every N examples or seconds, at the end of the stream and on SIGTERM/SIGINT.

use super::engine::{
    ewc_penalty, open_buffer, prepare_importance, Importance, LossName, OptimizerArgs,
    ProjectionName,
};
use super::{num, Global, HelpExtra, JsonLines, Status};
use anyhow::Context;
use mnemo::checkpoint::prepare_checkpoint;
use mnemo::data::stream::{Chunk, StreamFormat, StreamOptions, StreamReader};
use mnemo::data::Dataset;
use mnemo::fsutil::Destinations;
use mnemo::model::Model;
use mnemo::train::online::Learner;
use mnemo::train::{
    AnchorPull, Ema, EwcPenalty, Lwf, Optimizer, Replay, Si, StateFile, Strategy, TrainConfig,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("learn from a Python producer, one example at a time, keeping an EMA", "python3 producer.py | mnemo online model.safetensors --data - --lr 0.01 --optimizer sgd --ema ema.safetensors --ema-decay 0.999 -o live.safetensors > prequential.jsonl"),
        ("watch the prequential error for drift in the same pipe", "mnemo data stream test.safetensors | mnemo online model.safetensors --data - -o live.safetensors --state online.state | mnemo drift --field error --detector ddm"),
        ("resume after a crash: the same command, the stream sent again from its start", "mnemo data stream day.safetensors | mnemo online model.safetensors --data - -o live.safetensors --state online.state"),
    ],
    exit_status: &[
        (0, "the stream ended, or a SIGTERM/SIGINT stop wrote its checkpoint"),
        (
            2,
            "error: bad arguments, a malformed or cut chunk (named; what was learned before it is checkpointed), or non-finite weights",
        ),
    ],
};

/// What a resumed learner does with the stream's first examples.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The producer sends the stream again from its start: the examples already learned
    /// are skipped.
    Skip,
    /// The producer continues where it stopped: every example is new.
    Continue,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Told from the first bytes.
    Auto,
    /// safetensors files back to back, each a chunk.
    Safetensors,
    /// One JSON object per line: {"input": [...], "target": 3}.
    Jsonl,
}

/// A stream's records on stdout, one JSON line per --every examples: `seen` (examples
/// learned so far), `n`, the prequential `loss`, `accuracy` and `error` (1 − accuracy) of
/// those examples scored before the learner trained on them, the chunk's `train_loss`,
/// and `updates`. Messages (checkpoints) go to stderr.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The starting checkpoint.
    pub model: PathBuf,
    /// The stream: `-` for stdin, or a FIFO or file.
    #[arg(long, value_name = "STREAM")]
    pub data: PathBuf,
    /// The stream's framing.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// The largest chunk (frame or line) accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30, value_parser = mnemo::validate::count_u64)]
    pub max_chunk_bytes: u64,
    /// Architecture, for checkpoints without `mnemo.arch` metadata.
    #[arg(long, value_name = "SPEC")]
    pub arch: Option<String>,
    /// Which head of a multi-head model to train.
    #[arg(long, value_name = "NAME")]
    pub head: Option<String>,
    /// The live model, written atomically at every checkpoint (the main output).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Also keep an exponential moving average of the weights and write it here.
    #[arg(long, value_name = "OUT")]
    pub ema: Option<PathBuf>,
    /// The EMA's decay: 0.999 for slow drift, 0.99 when the stream shifts quickly.
    #[arg(long, value_name = "D", default_value_t = 0.999, value_parser = mnemo::validate::unit_closed)]
    pub ema_decay: f64,
    /// Save the learner's state (weights, optimizer, EMA, stream position) here at every
    /// checkpoint, and resume from it when it exists.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// On resuming: skip the examples already learned (the producer starts over) or take
    /// every example as new (it continues).
    #[arg(long, value_enum, default_value = "skip", requires = "state")]
    pub resume: Resume,
    /// Checkpoint every N examples learned.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = mnemo::validate::count_u64)]
    pub checkpoint_every: u64,
    /// Also checkpoint when this many seconds have passed since the last one.
    #[arg(long, value_name = "S", value_parser = mnemo::validate::seconds)]
    pub checkpoint_seconds: Option<f64>,
    /// One record per N examples (masks and multi-hot rows: one per chunk).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = mnemo::validate::count_u64)]
    pub every: u64,
    /// Stop after learning this many examples (in all, across resumptions).
    #[arg(long, value_name = "N", value_parser = mnemo::validate::count_u64)]
    pub max_examples: Option<u64>,
    /// Examples per update.
    #[arg(long, default_value_t = 1, value_parser = mnemo::validate::count)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "ce")]
    pub loss: LossName,
    /// Scale the gradient so its global L2 norm is at most this.
    #[arg(long, value_name = "MAX", value_parser = mnemo::validate::positive)]
    pub clip_grad_norm: Option<f64>,
    /// FISHER:ANCHOR: an EWC penalty holding an earlier task's weights (repeatable).
    #[arg(long, value_name = "FISHER:ANCHOR")]
    pub penalty: Vec<String>,
    /// Strength λ of the penalties.
    #[arg(long, default_value_t = 1.0, value_name = "L", value_parser = mnemo::validate::non_negative)]
    pub lambda: f64,
    #[command(flatten)]
    pub anchor: super::engine::AnchorArgs,
    #[command(flatten)]
    pub lwf: super::engine::LwfArgs,
    #[command(flatten)]
    pub si: super::engine::SiArgs,
    /// Experience replay: pair every micro-batch with one drawn from this on-disk buffer
    /// (created when missing), and offer the stream's examples to it; written at every
    /// checkpoint, after the live model. The same buffer `replay-train` uses.
    #[arg(long, value_name = "BUF")]
    pub buffer: Option<PathBuf>,
    /// The new buffer's capacity (default 10000; an existing buffer keeps its own).
    #[arg(long, value_name = "C", requires = "buffer", value_parser = mnemo::validate::count)]
    pub capacity: Option<usize>,
    /// Weight r of the replay loss: (1 − r)·new + r·replay.
    #[arg(long, value_name = "R", default_value_t = 0.5, requires = "buffer", value_parser = mnemo::validate::unit_closed)]
    pub replay_ratio: f64,
    /// The new buffer's policy: reservoir (Algorithm R) or class-balanced (CBRS).
    #[arg(long, value_name = "POLICY", requires = "buffer", value_parser = ["reservoir", "class-balanced"])]
    pub policy: Option<String>,
    /// Weight of the logit distillation on replayed examples (dark experience replay).
    #[arg(long, value_name = "W", default_value_t = 0.0, requires = "buffer", value_parser = mnemo::validate::non_negative)]
    pub distill: f64,
    /// What the replayed batch does: trained on (`none`), or A-GEM's reference gradient
    /// (`agem`), as in replay-train.
    #[arg(long, value_enum, default_value = "none", requires = "buffer")]
    pub projection: ProjectionName,
    /// Dropout's random stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub opt: OptimizerArgs,
}

const SEEN_KEY: &str = "mnemo.online.seen";

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let mut d = Destinations::new();
    d.input("the model", &args.model);
    // stdin or a FIFO (which `online`, a long-running reader, may wait on) is read once:
    // nothing can write over it.
    let fifo = {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(&args.data).is_ok_and(|m| m.file_type().is_fifo())
    };
    if !super::is_stream(&args.data) && !fifo {
        d.input("--data", &args.data);
    }
    super::engine::penalty_inputs(&mut d, &args.penalty);
    super::engine::strategy_inputs(&mut d, &args.anchor, &args.lwf, &args.si);
    if let Some(s) = &args.state {
        d.in_place("--state", s);
    }
    if let Some(b) = &args.buffer {
        d.in_place("--buffer", b);
    }
    if let Some(e) = &args.ema {
        d.output("--ema", e);
    }
    d.output("-o", &args.output).check()?;

    let device = g.device()?;
    let (mut model, ckpt) = Model::open(&args.model, args.arch.as_deref(), &device)?;
    let head = model.choose_head(args.head.as_deref()).context("--head")?;
    let mut prov = g.provenance();
    let model_hash = ckpt.content_hash()?;
    prov.input(args.model.display().to_string(), model_hash.clone());
    prov.seed = Some(args.seed);
    let penalty = ewc_penalty(&args.penalty, args.lambda, &model, &mut prov)?;
    let pull = args.anchor.open(&model, &mut prov)?;
    let (si, si_prior) = match args.si.open(&model, &mut prov)? {
        Some((s, prior)) => (Some(s), prior),
        None => (None, None),
    };
    let lwf = match &args.lwf.distill_from {
        Some(p) => Some(super::engine::open_teacher(
            p,
            &args.lwf,
            &mut model,
            None,
            head.as_deref(),
            &mut prov,
        )?),
        None => None,
    };
    // The buffer is locked like the state (two learners on one buffer take turns).
    let _buffer_lock = match &args.buffer {
        Some(p) => Some(mnemo::fsutil::lock_in_place(p)?),
        None => None,
    };
    let replay = match &args.buffer {
        Some(p) => {
            let b = open_buffer(
                p,
                args.capacity,
                args.policy.as_deref(),
                args.seed,
                args.distill,
            )?;
            if args.projection == ProjectionName::Agem && args.distill > 0.0 {
                anyhow::bail!("--distill applies to experience replay, not to --projection agem");
            }
            Some(args.projection.replay(b, args.replay_ratio, args.distill))
        }
        None => None,
    };
    let cfg = TrainConfig {
        batch_size: args.batch_size,
        seed: args.seed,
        head,
        clip_grad_norm: args.clip_grad_norm,
        // focal: torchvision's sigmoid_focal_loss defaults (α 0.25, γ 2).
        loss: args.loss.to_loss(0.25, 2.0)?,
        shuffle: false,
        ..Default::default()
    };
    let opt_cfg = args.opt.config();
    let settings = format!(
        "online|batch={}|ema={:?}|lambda={}|l2={}|lwf={:?}|replay={:?}{}",
        args.batch_size,
        args.ema.as_ref().map(|_| args.ema_decay),
        args.lambda,
        args.anchor.l2_lambda,
        args.lwf.distill_from.as_ref().map(|_| (
            args.lwf.distill_temperature,
            args.lwf.distill_weight,
            &args.lwf.distill_classes
        )),
        replay.as_ref().map(|r| (
            r.ratio,
            r.distill,
            r.projection,
            r.buffer.capacity,
            r.buffer.policy.as_str()
        )),
        args.si.settings(),
    );
    let state = args.state.as_ref().map(|path| StateFile {
        path: path.clone(),
        fingerprint: StateFile::fingerprint(
            prov.inputs.iter().map(|(_, h)| h.as_str()),
            "online",
            &cfg,
            &opt_cfg,
            &settings,
        ),
        save_every: None,
    });
    let _lock = match &args.state {
        Some(p) => Some(mnemo::fsutil::lock_in_place(p)?),
        None => None,
    };
    let mut opt = Optimizer::new(opt_cfg);
    let ema = match &args.ema {
        Some(_) => Some(Ema::new(args.ema_decay)?),
        None => None,
    };
    let mut strategies = Strategies {
        penalty,
        pull,
        lwf,
        si,
        replay,
        ema,
    };
    let mut learner = Learner::new(&mut model, &mut opt, &cfg)?;
    let mut skip = 0;
    let mut resumed = false;
    if let Some(sf) = &state {
        if learner
            .resume(sf)
            .with_context(|| format!("--state {}", sf.path.display()))?
        {
            g.say(format!(
                "online: resumed from {} after {} examples",
                sf.path.display(),
                learner.seen
            ));
            resumed = true;
            if args.resume == Resume::Skip {
                skip = learner.seen;
            }
        }
    }

    // SIGTERM and SIGINT ask for a clean stop: the micro-batch in hand is finished, then
    // everything learned is checkpointed.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing a signal handler")?;
    }
    let opts = StreamOptions {
        format: match args.format {
            Format::Auto => None,
            Format::Safetensors => Some(StreamFormat::Safetensors),
            Format::Jsonl => Some(StreamFormat::JsonLines),
        },
        chunk: args.batch_size,
        max_chunk_bytes: args.max_chunk_bytes,
    };
    let chunks = spawn_reader(&args.data, opts)?;

    let mut out = JsonLines::stdout();
    let mut window = Window::default();
    let mut since_checkpoint = 0u64;
    let mut last_checkpoint = Instant::now();
    let checkpoint_after = args.checkpoint_seconds.map(Duration::from_secs_f64);
    let files = Files {
        output: &args.output,
        ema: args.ema.as_deref(),
        importance: args
            .si
            .si_importance
            .as_deref()
            .map(|p| (p, si_prior.as_ref())),
        state: state.as_ref(),
        prov: &prov,
    };
    let mut failure = None;
    // Examples read but not yet learned (less than a micro-batch).
    let mut pending: Option<Dataset> = None;
    // Whether this process has written a checkpoint yet (a run that learns nothing new
    // still writes its outputs once).
    let mut wrote = false;
    let mut stopped_by_signal = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            stopped_by_signal = true;
            break;
        }
        if args.max_examples.is_some_and(|m| learner.seen >= m) {
            break;
        }
        if let Some(after) = checkpoint_after {
            if since_checkpoint > 0 && last_checkpoint.elapsed() >= after {
                files.write(&mut learner, &mut strategies, g)?;
                (since_checkpoint, wrote) = (0, true);
                last_checkpoint = Instant::now();
            }
        }
        let chunk = match chunks.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let Some(data) = unseen(chunk, &mut skip) else {
            continue;
        };
        pending = Some(match pending.take() {
            None => data,
            Some(p) => append(p, &data),
        });
        // Whole micro-batches, cut from the stream (not from its chunks, so the framing
        // does not change what is learned).
        while let Some(batch) = next_batch(&mut pending, &args, &learner, false) {
            step(
                &mut learner,
                &mut strategies,
                &batch,
                &args,
                &mut window,
                &mut out,
            )?;
            since_checkpoint += batch.len() as u64;
            if since_checkpoint >= args.checkpoint_every {
                files.write(&mut learner, &mut strategies, g)?;
                (since_checkpoint, wrote) = (0, true);
                last_checkpoint = Instant::now();
            }
        }
    }
    // At the stream's end a short last micro-batch is learned too (torch's DataLoader without
    // drop_last); on a stop it is not (a resumed learner reads it again).
    if failure.is_none() && !stopped_by_signal {
        if let Some(batch) = next_batch(&mut pending, &args, &learner, true) {
            step(
                &mut learner,
                &mut strategies,
                &batch,
                &args,
                &mut window,
                &mut out,
            )?;
            since_checkpoint += batch.len() as u64;
        }
    }
    window.flush(learner.seen, &mut |r| out.emit_io(&r))?;
    // What was learned is kept, also when the stream failed: only the bad chunk is lost.
    // Once at least, unless a resumed learner learned nothing new: its files on disk are
    // already the state it holds.
    if since_checkpoint > 0 || !(wrote || resumed) {
        files.write(&mut learner, &mut strategies, g)?;
    }
    if let Some(e) = failure {
        return Err(anyhow::Error::from(e).context(format!(
            "reading the stream {} after {} examples (the checkpoint holds them)",
            args.data.display(),
            learner.seen
        )));
    }
    if stopped_by_signal {
        g.say(format!(
            "online: stopped by a signal after {} examples",
            learner.seen
        ));
    }
    Ok(Status::Success)
}

/// Scores one micro-batch (the prequential record), then learns from it.
fn step(
    learner: &mut Learner,
    strategies: &mut Strategies,
    batch: &Dataset,
    args: &Args,
    window: &mut Window,
    out: &mut JsonLines,
) -> anyhow::Result<()> {
    let first = learner.seen;
    let context = |e: mnemo::MnemoError| {
        anyhow::Error::from(e).context(format!(
            "{} on the stream {}, examples {}..{}",
            args.model.display(),
            args.data.display(),
            first,
            first + batch.len() as u64
        ))
    };
    let scored = learner
        .score(batch, &mut strategies.all())
        .map_err(context)?;
    let learned = learner
        .learn(batch, &mut strategies.all())
        .map_err(context)?;
    window.add(
        &scored,
        &learned,
        batch.len(),
        learner.seen,
        args.every,
        &mut |r| out.emit_io(&r),
    )?;
    Ok(())
}

/// The next whole micro-batch of `pending` (up to --max-examples); with `short`, at the
/// stream's end, whatever is left of one.
fn next_batch(
    pending: &mut Option<Dataset>,
    args: &Args,
    learner: &Learner,
    short: bool,
) -> Option<Dataset> {
    let p = pending.as_ref()?;
    let left = args
        .max_examples
        .map_or(u64::MAX, |m| m.saturating_sub(learner.seen));
    let mut n = (args.batch_size as u64).min(left) as usize;
    if short {
        n = n.min(p.len());
    }
    if n == 0 || p.len() < n {
        return None;
    }
    let batch = select(p, 0, n);
    *pending = (p.len() > n).then(|| select(p, n, p.len() - n));
    Some(batch)
}

/// `b`'s examples after `a`'s (the stream's shapes are checked by its reader).
fn append(mut a: Dataset, b: &Dataset) -> Dataset {
    a.inputs.extend_from_slice(&b.inputs);
    a.targets.extend_from_slice(&b.targets);
    a.from_u8 &= b.from_u8;
    a
}

/// The reading side runs on its own thread, so the learner can checkpoint on time and on
/// signals while a read blocks.
fn spawn_reader(
    data: &Path,
    opts: StreamOptions,
) -> anyhow::Result<std::sync::mpsc::Receiver<mnemo::Result<Chunk>>> {
    let input: Box<dyn std::io::BufRead + Send> = if data == Path::new("-") {
        Box::new(std::io::BufReader::with_capacity(1 << 16, std::io::stdin()))
    } else {
        let f = std::fs::File::open(data).with_context(|| format!("--data {}", data.display()))?;
        Box::new(std::io::BufReader::with_capacity(1 << 16, f))
    };
    let label = data.to_path_buf();
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    std::thread::spawn(move || {
        for c in StreamReader::new(input, label, opts) {
            if tx.send(c).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// The part of `chunk` not yet learned (a resumed learner skips `skip` examples).
fn unseen(chunk: Chunk, skip: &mut u64) -> Option<Dataset> {
    let n = chunk.data.len() as u64;
    if *skip >= chunk.first + n {
        return None;
    }
    let from = skip.saturating_sub(chunk.first) as usize;
    *skip = 0;
    Some(if from == 0 {
        chunk.data
    } else {
        select(&chunk.data, from, chunk.data.len() - from)
    })
}

/// Examples `from..from + n` of `d`.
fn select(d: &Dataset, from: usize, n: usize) -> Dataset {
    let per_x = d.example_shape.iter().product::<usize>();
    let per_t = d.target_kind.per_example();
    Dataset {
        path: d.path.clone(),
        example_shape: d.example_shape.clone(),
        inputs: d.inputs[from * per_x..(from + n) * per_x].to_vec(),
        targets: d.targets[from * per_t..(from + n) * per_t].to_vec(),
        target_kind: d.target_kind,
        from_u8: d.from_u8,
    }
}

/// The running record: prequential scores of the examples since the last one.
#[derive(Default)]
struct Window {
    n: u64,
    loss: f64,
    correct: f64,
    /// Σ over the window's examples of their chunk's mean training loss.
    train_loss: f64,
    updates: u64,
}

impl Window {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        s: &mnemo::train::online::Scored,
        learned: &mnemo::train::online::Learned,
        n: usize,
        seen: u64,
        every: u64,
        emit: &mut dyn FnMut(serde_json::Value) -> mnemo::Result<()>,
    ) -> mnemo::Result<()> {
        self.updates += learned.updates;
        let start = seen - n as u64;
        match &s.per_example {
            Some((loss, correct)) => {
                for (i, (l, c)) in loss.iter().zip(correct).enumerate() {
                    self.n += 1;
                    self.loss += l;
                    self.train_loss += learned.loss;
                    self.correct += *c as u8 as f64;
                    if self.n >= every {
                        self.flush(start + i as u64 + 1, emit)?;
                    }
                }
            }
            None => {
                self.n += n as u64;
                self.loss += s.loss * n as f64;
                self.train_loss += learned.loss * n as f64;
                self.correct += s.accuracy * n as f64;
                self.flush(seen, emit)?;
            }
        }
        Ok(())
    }

    fn flush(
        &mut self,
        seen: u64,
        emit: &mut dyn FnMut(serde_json::Value) -> mnemo::Result<()>,
    ) -> mnemo::Result<()> {
        if self.n == 0 {
            return Ok(());
        }
        let n = self.n as f64;
        emit(json!({
            "seen": seen, "n": self.n, "loss": num(self.loss / n), "accuracy": num(self.correct / n),
            "error": num((n - self.correct) / n),
            "train_loss": num(self.train_loss / n),
            "updates": self.updates,
        }))?;
        let updates = self.updates;
        *self = Window {
            updates,
            ..Default::default()
        };
        Ok(())
    }
}

/// The run's strategies, owned here so their files (the EMA, SI's importance, the buffer)
/// can be written between updates; handed to the learner in this order at every call (the
/// engine's order, the EMA last).
struct Strategies {
    penalty: Option<EwcPenalty>,
    pull: Option<AnchorPull>,
    lwf: Option<Lwf>,
    si: Option<Si>,
    replay: Option<Replay>,
    ema: Option<Ema>,
}

impl Strategies {
    fn all(&mut self) -> Vec<&mut dyn Strategy> {
        let mut v: Vec<&mut dyn Strategy> = Vec::new();
        if let Some(p) = self.penalty.as_mut() {
            v.push(p);
        }
        if let Some(p) = self.pull.as_mut() {
            v.push(p);
        }
        if let Some(l) = self.lwf.as_mut() {
            v.push(l);
        }
        if let Some(s) = self.si.as_mut() {
            v.push(s);
        }
        if let Some(r) = self.replay.as_mut() {
            v.push(r);
        }
        if let Some(e) = self.ema.as_mut() {
            v.push(e);
        }
        v
    }
}

/// The checkpoint's files.
struct Files<'a> {
    output: &'a Path,
    ema: Option<&'a Path>,
    /// --si-importance, and the prior importance it adds to.
    importance: Option<(&'a Path, Option<&'a Importance>)>,
    state: Option<&'a StateFile>,
    prov: &'a mnemo::provenance::Provenance,
}

impl Files<'_> {
    /// The state first (the truth a resumed learner reads), then the EMA and SI's
    /// importance, and the live model last; each atomically, so the last complete
    /// checkpoint is always loadable.
    fn write(
        &self,
        learner: &mut Learner,
        strategies: &mut Strategies,
        g: &Global,
    ) -> anyhow::Result<()> {
        learner
            .save(self.state, &strategies.all())
            .with_context(|| match self.state {
                Some(s) => format!("writing the state {}", s.path.display()),
                None => "reading the weights".to_string(),
            })?;
        let mut meta = self.prov.metadata();
        meta.insert("mnemo.arch".into(), learner.model.spec.to_json());
        meta.insert(SEEN_KEY.into(), learner.seen.to_string());
        let snap = learner.model.snapshot()?;
        let manifest = learner.model.manifest();
        let live = snap.tensors(&manifest, "");
        mnemo::train::finite::check_tensors(&live)?;
        let ema = match (self.ema, &strategies.ema) {
            (Some(p), Some(e)) => {
                let mut s = snap.clone();
                for (k, v) in &e.values {
                    s.values.insert(k.clone(), v.clone());
                }
                let tensors = s.tensors(&manifest, "");
                mnemo::train::finite::check_tensors(&tensors)?;
                let mut m: BTreeMap<String, String> = meta.clone();
                m.insert("mnemo.ema.decay".into(), e.decay.to_string());
                m.insert("mnemo.ema.updates".into(), e.updates.to_string());
                Some(
                    prepare_checkpoint(p, tensors, &m)
                        .with_context(|| format!("writing {}", p.display()))?,
                )
            }
            _ => None,
        };
        let importance = match (self.importance, &strategies.si) {
            (Some((p, prior)), Some(si)) => Some(
                prepare_importance(p, si, prior, learner.model, self.prov)
                    .with_context(|| format!("writing {}", p.display()))?,
            ),
            _ => None,
        };
        let live = prepare_checkpoint(self.output, live, &meta)
            .with_context(|| format!("writing {}", self.output.display()))?;
        let buffer = match &strategies.replay {
            Some(r) => Some(
                r.buffer
                    .prepare(&r.buffer.path, &self.prov.metadata())
                    .with_context(|| format!("writing the buffer {}", r.buffer.path.display()))?,
            ),
            None => None,
        };
        if let Some(e) = ema {
            e.commit()?;
        }
        if let Some(i) = importance {
            i.commit()?;
        }
        live.commit()?;
        // The buffer last, as replay-train writes it: a learner killed between the two
        // leaves the old buffer, so the examples are not offered twice.
        if let Some(b) = buffer {
            b.commit()?;
        }
        g.say(format!(
            "online: checkpoint after {} examples ({} updates)",
            learner.seen, learner.opt.step
        ));
        Ok(())
    }
}
