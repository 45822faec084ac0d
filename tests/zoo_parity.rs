//! The model zoo against torchvision (fixtures/model_zoo/gen.py): tensor names, shapes and
//! order of `resnet18` and `efficientnet_b0` equal torchvision's `state_dict()`, those of
//! `efficientnet_lite0` PyPI's efficientnet-lite-pytorch's; forward passes in eval and train
//! mode and one SGD step equal torch's, with every tensor filled from a formula both sides
//! compute (full-size weights are too big to commit).

mod common;
use candle_core::{DType, Device, Tensor, Var, D};
use common::*;
use mnemo::checkpoint::{write_checkpoint, Checkpoint, Dtype, OwnedTensor};
use mnemo::data::Dataset;
use mnemo::lora::resolve_targets;
use mnemo::model::{ArchSpec, Layer, Mode, Model, ParamKind, ARCH_KEY};
use mnemo::rng::Rng;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn zoo(name: &str) -> PathBuf {
    fixtures().join("model_zoo").join(name)
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(zoo(name)).unwrap()).unwrap()
}

/// `ArchSpec::params()` as `[name, dtype, shape]`, the fixture's layout.
fn manifest(spec: &ArchSpec) -> Vec<Value> {
    spec.params()
        .into_iter()
        .map(|p| {
            let dtype = if p.kind == ParamKind::Counter {
                "I64"
            } else {
                "F32"
            };
            serde_json::json!([p.name, dtype, p.shape])
        })
        .collect()
}

#[test]
fn names_shapes_and_order_equal_torchvision() {
    let keys = json("state_dict_keys.json");
    let keys = keys.as_object().unwrap();
    assert_eq!(keys.len(), 11);
    for (arch, want) in keys {
        let spec = ArchSpec::parse(arch).unwrap();
        let got = manifest(&spec);
        let want = want.as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{arch}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w, "{arch}");
        }
    }
}

/// Every conv of efficientnet_lite0 pads as the class's `Conv2dStaticSamePadding` does at
/// that image size (the `ZeroPad2d` of those that pad; the others have none).
#[test]
fn lite0_static_padding_equals_the_classes() {
    let want = json("static_padding.json");
    let want = want.as_object().unwrap();
    assert_eq!(want.len(), 5);
    for (arch, pads) in want {
        let pads = pads.as_object().unwrap();
        let mut got = serde_json::Map::new();
        let mut convs = 0;
        ArchSpec::parse(arch).unwrap().visit(&mut |name, layer| {
            if let Layer::Conv2d { static_padding, .. } = layer {
                convs += 1;
                if let Some(p) = static_padding {
                    got.insert(name.to_string(), serde_json::json!(p));
                }
            }
        });
        // Stem, 16 depthwise, 15 expand, 16 project, head.
        assert_eq!(convs, 49, "{arch}");
        assert_eq!(&got, pads, "{arch}");
    }
}

/// gen.py's `fill_value`: tensor `i` of the state dict, element k.
fn fill_value(i: usize, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let fan_in = if shape.len() >= 2 { n / shape[0] } else { 1 };
    (0..n)
        .map(|k| {
            let k = k as f64;
            let base = (0.37 * k + 1.1 * i as f64 + 0.0011 * (k * k)).sin();
            let v = if name.ends_with("running_mean") {
                0.1 * base
            } else if name.ends_with("running_var") {
                1.0 + 0.5 * base.abs()
            } else if name.ends_with("weight") && shape.len() >= 2 {
                base * (3.0 / fan_in as f64).sqrt()
            } else if name.ends_with("weight") {
                1.0 + 0.1 * base
            } else if name.ends_with("bias") {
                0.05 * base
            } else {
                0.1 * base
            };
            v as f32
        })
        .collect()
}

/// The formula's checkpoint for `spec`, with `mnemo.arch`, written to `path`.
fn write_formula(spec: &ArchSpec, path: &Path) {
    let tensors = spec
        .params()
        .iter()
        .enumerate()
        .map(|(i, p)| match p.kind {
            ParamKind::Counter => OwnedTensor {
                name: p.name.clone(),
                dtype: Dtype::I64,
                shape: vec![],
                data: Cow::Owned(3i64.to_le_bytes().to_vec()),
            },
            _ => OwnedTensor::f32(
                p.name.clone(),
                p.shape.clone(),
                &fill_value(i, &p.name, &p.shape),
            ),
        })
        .collect();
    let meta = BTreeMap::from([(ARCH_KEY.to_string(), spec.to_json())]);
    write_checkpoint(path, tensors, &meta).unwrap();
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// (max |a − b|, that over max |b|).
fn errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let abs = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max);
    let scale = want.iter().map(|b| (*b as f64).abs()).fold(0.0, f64::max);
    (abs, abs / scale.max(1e-12))
}

struct Case {
    name: String,
    spec: ArchSpec,
    data_file: PathBuf,
    data: Dataset,
    train_stats: bool,
    /// The whole state dict after one SGD step is in the fixture (`CASE.step.NAME`).
    step: bool,
    /// Only SAMPLES values of each tensor after the step (`CASE.step_sampled.NAME`).
    step_sampled: bool,
}

fn cases() -> Vec<Case> {
    json("cases.json")
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, c)| Case {
            name: name.clone(),
            spec: ArchSpec::parse(c["arch"].as_str().unwrap()).unwrap(),
            data_file: zoo(c["data"].as_str().unwrap()),
            data: Dataset::open(zoo(c["data"].as_str().unwrap())).unwrap(),
            train_stats: c["train_stats"].as_bool().unwrap(),
            step: c["step"].as_bool().unwrap(),
            step_sampled: c.get("step_sampled").and_then(Value::as_bool) == Some(true),
        })
        .collect()
}

/// gen.py's SAMPLES: of a tensor of n values, the step_sampled cases keep those at
/// j·n / m for j < m = min(n, SAMPLES).
const SAMPLES: usize = 48;

fn sample(v: &[f32]) -> Vec<f32> {
    let n = v.len();
    let m = n.min(SAMPLES);
    (0..m).map(|j| v[j * n / m]).collect()
}

const TOLERANCE: f64 = 1e-4;

/// Checks logits against torch's float32 result, allowing `TOLERANCE` relative plus twice
/// torch's own float32 error (its distance from the float64 result): batchnorm over 4
/// examples of 1×1 maps amplifies rounding, in torch as here. Returns (abs, rel) vs torch.
fn check_logits(what: &str, got: &[f32], expected: &Checkpoint, key: &str) -> (f64, f64) {
    let f32_ref = expected.to_f32(key).unwrap();
    let f64_ref = expected.to_f32(&format!("{key}_f64")).unwrap();
    let (abs, rel) = errors(got, &f32_ref);
    let (_, rel_exact) = errors(got, &f64_ref);
    let (_, torch_own) = errors(&f32_ref, &f64_ref);
    eprintln!(
        "{what}: vs torch max abs {abs:.2e}, rel {rel:.2e}; vs float64 rel {rel_exact:.2e} (torch's own float32: {torch_own:.2e})"
    );
    assert!(
        rel < TOLERANCE + 2.0 * torch_own,
        "{what}: rel {rel} (torch's own {torch_own})"
    );
    (abs, rel)
}

#[test]
fn forward_matches_torch_in_eval_and_train_mode() {
    let expected = Checkpoint::open(zoo("expected.safetensors")).unwrap();
    let want = |n: &str| expected.to_f32(n).unwrap();
    let d = workdir();
    for case in cases() {
        let path = d.path().join(format!("{}.safetensors", case.name));
        write_formula(&case.spec, &path);
        let all: Vec<usize> = (0..case.data.len()).collect();
        let (x, _) = case.data.batch(&all, &Device::Cpu).unwrap();

        // Train mode: batch statistics, running statistics updated as torch does.
        let (mut model, _) = Model::open(&path, None, &Device::Cpu).unwrap();
        let logits = model
            .forward(&x, None, Mode::Train, &mut Rng::new(0))
            .unwrap();
        check_logits(
            &format!("{} train logits", case.name),
            &flat(&logits),
            &expected,
            &format!("{}.train_logits", case.name),
        );
        if case.train_stats {
            let mut worst = (0.0f64, 0.0f64);
            for (name, t) in &model.buffers {
                let (a, r) = errors(&flat(t), &want(&format!("{}.train.{name}", case.name)));
                worst = (worst.0.max(a), worst.1.max(r));
            }
            eprintln!(
                "{} running stats after train pass: max abs {:.2e}, rel {:.2e}",
                case.name, worst.0, worst.1
            );
            assert!(worst.1 < TOLERANCE, "{}: {worst:?}", case.name);
            assert!(model.counters.values().all(|&c| c == 4));
        }

        // Eval mode with torch's calibrated running statistics.
        let (mut model, _) = Model::open(&path, None, &Device::Cpu).unwrap();
        let names: Vec<String> = model.buffers.keys().cloned().collect();
        for name in names {
            let v = want(&format!("{}.calibrated.{name}", case.name));
            let t = Tensor::from_vec(v, model.buffers[&name].dims(), &Device::Cpu).unwrap();
            model.buffers.insert(name, t);
        }
        let logits = model
            .forward(&x, None, Mode::Eval, &mut Rng::new(0))
            .unwrap();
        check_logits(
            &format!("{} eval logits", case.name),
            &flat(&logits),
            &expected,
            &format!("{}.eval_logits", case.name),
        );
    }
}

/// `mnemo train-ewc`, one SGD step of the whole batch, against torch's step.
#[test]
fn one_sgd_step_matches_torch() {
    let expected = Checkpoint::open(zoo("expected.safetensors")).unwrap();
    let d = workdir();
    let mut checked = 0;
    for case in cases().into_iter().filter(|c| c.step) {
        let init = d.path().join(format!("{}.safetensors", case.name));
        let out = d.path().join(format!("{}-step.safetensors", case.name));
        write_formula(&case.spec, &init);
        sgd_step(d.path(), &case, &init, &out);
        let before = Checkpoint::open(&init).unwrap();
        let after = Checkpoint::open(&out).unwrap();
        let (mut update_err, mut update_scale, mut stat_rel) = (0.0f64, 0.0f64, 0.0f64);
        // The worst tensor's own relative error: a parameter with a small gradient must
        // not hide behind the largest update.
        let mut worst_tensor = (0.0f64, String::new());
        for p in case.spec.params() {
            let want_name = format!("{}.step.{}", case.name, p.name);
            match p.kind {
                ParamKind::Counter => {
                    assert_eq!(after.to_i64(&p.name).unwrap(), vec![4], "{}", p.name);
                }
                ParamKind::RunningStat => {
                    let (_, r) = errors(
                        &after.to_f32(&p.name).unwrap(),
                        &expected.to_f32(&want_name).unwrap(),
                    );
                    stat_rel = stat_rel.max(r);
                }
                ParamKind::Trainable => {
                    // Compare updates, not weights: the weights barely move in one step.
                    let w0 = before.to_f32(&p.name).unwrap();
                    let ours: Vec<f32> = after
                        .to_f32(&p.name)
                        .unwrap()
                        .iter()
                        .zip(&w0)
                        .map(|(a, b)| a - b)
                        .collect();
                    let theirs: Vec<f32> = expected
                        .to_f32(&want_name)
                        .unwrap()
                        .iter()
                        .zip(&w0)
                        .map(|(a, b)| a - b)
                        .collect();
                    let (abs, rel) = errors(&ours, &theirs);
                    let scale_t = theirs.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
                    if scale_t < 1e-4 {
                        // Gradient zero in exact arithmetic (a bias right before a
                        // batchnorm, the key bias under softmax): both sides' updates are
                        // rounding noise, which must stay noise.
                        let ours_max = ours.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
                        assert!(
                            ours_max < 1e-4,
                            "{}: {} moved by {ours_max}",
                            case.name,
                            p.name
                        );
                    } else if rel > worst_tensor.0 {
                        worst_tensor = (rel, p.name.clone());
                    }
                    update_err = update_err.max(abs);
                    update_scale =
                        update_scale.max(theirs.iter().map(|v| v.abs() as f64).fold(0.0, f64::max));
                }
            }
        }
        let rel = update_err / update_scale;
        eprintln!(
            "{} one SGD step: update max abs err {update_err:.2e} (largest update {update_scale:.2e}, rel {rel:.2e}); worst tensor rel {:.2e} ({}); running stats rel {stat_rel:.2e}",
            case.name, worst_tensor.0, worst_tensor.1
        );
        assert!(
            update_scale > 1e-3,
            "{}: the step changed nothing",
            case.name
        );
        assert!(rel < 1e-3, "{}: update error {rel}", case.name);
        assert!(
            worst_tensor.0 < 5e-3,
            "{}: update of {} off by {}",
            case.name,
            worst_tensor.1,
            worst_tensor.0
        );
        assert!(
            stat_rel < TOLERANCE,
            "{}: running stats {stat_rel}",
            case.name
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "efficientnet_small and vit_small");
}

/// `mnemo train-ewc` for one SGD step (lr 0.1) over the whole of the case's data.
fn sgd_step(dir: &Path, case: &Case, init: &Path, out: &Path) {
    let r = mnemo_in(
        dir,
        &[
            "train-ewc",
            init.to_str().unwrap(),
            "--data",
            case.data_file.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--no-shuffle",
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--epochs",
            "1",
            "--batch-size",
            &case.data.len().to_string(),
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}: {}", case.name, r.stderr);
}

/// Sampled updates against the fixture's float64 ones: (max abs error over the largest
/// update, the worst tensor's own relative error and its name, the cosine between the
/// two updates as one vector). Tensors whose float64 update is below 1e-6 (gradient zero
/// in exact arithmetic: `_bn2.bias` before the next block's batchnorm) must stay below
/// `noise` and are not counted.
fn against_f64(
    case: &str,
    updates: &BTreeMap<String, Vec<f32>>,
    expected: &Checkpoint,
    noise: f64,
) -> (f64, f64, String, f64) {
    let (mut err, mut scale, mut dot, mut n_ours, mut n_theirs) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let mut worst = (0f64, String::new());
    for (name, ours) in updates {
        let theirs = expected
            .to_f32(&format!("{case}.update_f64.{name}"))
            .unwrap();
        let (abs, rel) = errors(ours, &theirs);
        let t_max = theirs.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
        if t_max < 1e-6 {
            let o_max = ours.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
            assert!(o_max < noise, "{case}: {name} moved by {o_max}");
            continue;
        }
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
        err = err.max(abs);
        scale = scale.max(t_max);
        for (a, b) in ours.iter().zip(&theirs) {
            dot += *a as f64 * *b as f64;
            n_ours += (*a as f64).powi(2);
            n_theirs += (*b as f64).powi(2);
        }
    }
    assert!(scale > 1e-3, "{case}: the step changed nothing");
    (
        err / scale,
        worst.0,
        worst.1,
        dot / (n_ours * n_theirs).sqrt(),
    )
}

/// efficientnet_lite0 (4.7M values, SAMPLES of each tensor in the fixture): one SGD step.
/// ReLU6's gradient jumps where an activation crosses 0 or 6 and this net puts some within
/// float32 rounding of a kink, so no float32 step is an exact reference for another one
/// (torch's own float32 step is up to 4e-2 from its float64 one, depending on the data):
///
/// - exactness: the model run in float64 (forward in train mode, cross-entropy, candle's
///   backward) gives torch's float64 update to float32 precision;
/// - the real command: `train-ewc` in float32 moves the running statistics exactly as
///   torch does (they are continuous) and every counter by one, and its update is the
///   float64 one up to what kinks explain (cosine ≥ 0.999).
#[test]
fn lite0_sgd_step_matches_torch_in_float64_and_train_ewc_follows() {
    let expected = Checkpoint::open(zoo("expected.safetensors")).unwrap();
    let d = workdir();
    let mut checked = 0;
    for case in cases().into_iter().filter(|c| c.step_sampled) {
        let init = d.path().join(format!("{}.safetensors", case.name));
        write_formula(&case.spec, &init);

        // Float64, in process.
        let (mut model, _) = Model::open(&init, None, &Device::Cpu).unwrap();
        for v in model.params.values_mut() {
            *v = Var::from_tensor(&v.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        }
        for t in model.buffers.values_mut() {
            *t = t.to_dtype(DType::F64).unwrap();
        }
        let all: Vec<usize> = (0..case.data.len()).collect();
        let (x, y) = case.data.batch(&all, &Device::Cpu).unwrap();
        let x = x.to_dtype(DType::F64).unwrap();
        let logits = model
            .forward(&x, None, Mode::Train, &mut Rng::new(0))
            .unwrap();
        let classes = logits.dim(1).unwrap();
        let onehot: Vec<f64> = y
            .iter()
            .flat_map(|&t| (0..classes).map(move |c| if c as i64 == t { 1.0 } else { 0.0 }))
            .collect();
        let onehot = Tensor::from_vec(onehot, logits.dims(), &Device::Cpu).unwrap();
        let loss = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .and_then(|l| l * onehot)
            .and_then(|l| l.sum_all())
            .and_then(|l| l.affine(-1.0 / y.len() as f64, 0.0))
            .unwrap();
        let grads = loss.backward().unwrap();
        let updates: BTreeMap<String, Vec<f32>> = model
            .params
            .iter()
            .map(|(name, v)| {
                let g = grads.get(v.as_tensor()).unwrap();
                let u = (g * -0.1).unwrap().to_dtype(DType::F32).unwrap();
                (name.clone(), sample(&flat(&u)))
            })
            .collect();
        let (rel, worst, worst_name, cos) = against_f64(&case.name, &updates, &expected, 1e-9);
        eprintln!(
            "{} SGD update in float64: vs torch's float64 max abs err / largest update {rel:.2e}, worst tensor rel {worst:.2e} ({worst_name}), cosine 1 - {:.1e}",
            case.name,
            1.0 - cos
        );
        assert!(rel < 1e-5, "{}: float64 update error {rel}", case.name);
        assert!(
            worst < 1e-4,
            "{}: float64 update of {worst_name} off by {worst}",
            case.name
        );

        // Float32, the command.
        let out = d.path().join(format!("{}-step.safetensors", case.name));
        sgd_step(d.path(), &case, &init, &out);
        let before = Checkpoint::open(&init).unwrap();
        let after = Checkpoint::open(&out).unwrap();
        let mut stat_rel = 0f64;
        let mut updates = BTreeMap::new();
        for p in case.spec.params() {
            match p.kind {
                ParamKind::Counter => {
                    assert_eq!(after.to_i64(&p.name).unwrap(), vec![4], "{}", p.name);
                }
                ParamKind::RunningStat => {
                    let want = expected
                        .to_f32(&format!("{}.step_sampled.{}", case.name, p.name))
                        .unwrap();
                    let (_, r) = errors(&sample(&after.to_f32(&p.name).unwrap()), &want);
                    stat_rel = stat_rel.max(r);
                }
                ParamKind::Trainable => {
                    let w0 = sample(&before.to_f32(&p.name).unwrap());
                    let w1 = sample(&after.to_f32(&p.name).unwrap());
                    updates.insert(p.name, w1.iter().zip(&w0).map(|(a, b)| a - b).collect());
                }
            }
        }
        let (rel, worst, worst_name, cos) = against_f64(&case.name, &updates, &expected, 1e-4);
        eprintln!(
            "{} train-ewc SGD step (float32): update vs float64 max abs err / largest update {rel:.2e}, worst tensor rel {worst:.2e} ({worst_name}), cosine 1 - {:.1e}; running stats rel {stat_rel:.2e}",
            case.name,
            1.0 - cos
        );
        assert!(
            stat_rel < TOLERANCE,
            "{}: running stats {stat_rel}",
            case.name
        );
        assert!(cos > 0.999, "{}: update cosine {cos}", case.name);
        checked += 1;
    }
    assert_eq!(checked, 2, "lite0 and lite0_40");
}

#[test]
fn lora_targets_pick_exactly_the_vits_q_and_v_projections() {
    let spec = ArchSpec::parse("vit:depth=3").unwrap();
    let picked: Vec<String> = resolve_targets(&spec, &["*.q_proj".into(), "*.v_proj".into()])
        .unwrap()
        .into_keys()
        .collect();
    let mut want = Vec::new();
    for i in 0..3 {
        for p in ["q_proj", "v_proj"] {
            want.push(format!("encoder.layers.{i}.self_attention.{p}"));
        }
    }
    want.sort();
    assert_eq!(picked, want);
    // Convolutions inside containers are targets too, by their full names.
    let spec = ArchSpec::parse("resnet18:num_classes=10").unwrap();
    let picked = resolve_targets(&spec, &["layer4.1.conv2".into(), "fc".into()]).unwrap();
    assert_eq!(picked.len(), 2);
}

#[test]
fn lora_gate_adapts_the_vits_attention() {
    let d = workdir();
    let spec = ArchSpec::parse(
        "vit:image_size=16,patch_size=4,dim=32,depth=2,heads=4,mlp_dim=64,num_classes=5",
    )
    .unwrap();
    let model = d.path().join("vit.safetensors");
    write_formula(&spec, &model);
    let data = zoo("data_16.safetensors");
    let data = data.to_str().unwrap();
    let r = mnemo_in(
        d.path(),
        &[
            "lora-gate",
            model.to_str().unwrap(),
            "--data",
            data,
            "--val",
            data,
            "--targets",
            "*.q_proj,*.v_proj",
            "--rank",
            "2",
            "--threshold",
            "1000",
            "-o",
            "adapter",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let adapter = Checkpoint::open(d.path().join("adapter/adapter_model.safetensors")).unwrap();
    let mut modules: Vec<String> = adapter
        .names()
        .filter(|n| n.contains("lora_A"))
        .map(str::to_string)
        .collect();
    modules.sort();
    assert_eq!(modules.len(), 4, "{modules:?}");
    assert!(modules
        .iter()
        .all(|m| m.contains("self_attention.q_proj") || m.contains("self_attention.v_proj")));
}

#[test]
fn init_inspect_eval_and_train_on_a_zoo_model() {
    let d = workdir();
    let r = mnemo_in(
        d.path(),
        &[
            "init",
            "--arch",
            "resnet18:num_classes=10",
            "-o",
            "m.safetensors",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.last_json()["parameters"], 11_181_642);
    // The file is self-describing: its tensors are torchvision's, its arch the module tree.
    let ck = Checkpoint::open(d.path().join("m.safetensors")).unwrap();
    let spec = ArchSpec::from_json(&ck.metadata()[ARCH_KEY], None).unwrap();
    assert_eq!(spec, ArchSpec::parse("resnet18:num_classes=10").unwrap());
    let keys = json("state_dict_keys.json");
    for entry in keys["resnet18:num_classes=10"].as_array().unwrap() {
        let e = ck.entry(entry[0].as_str().unwrap()).unwrap();
        assert_eq!(serde_json::json!(e.shape), entry[2]);
    }
    let r = mnemo_in(d.path(), &["inspect", "m.safetensors"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let data = zoo("data_32.safetensors");
    let r = mnemo_in(
        d.path(),
        &["eval", "m.safetensors", "--data", data.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.last_json()["n"], 4);
    // Train a small EfficientNet with stochastic depth and dropout on: runs, deterministic.
    let r = mnemo_in(
        d.path(),
        &[
            "init",
            "--arch",
            "efficientnet_b0:num_classes=5,width_mult=0.1,depth_mult=0.5,stochastic_depth=0.5",
            "-o",
            "e.safetensors",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let small = zoo("data_16.safetensors");
    let mut outputs: Vec<Vec<Vec<f32>>> = Vec::new();
    for out in ["e1.safetensors", "e2.safetensors"] {
        let r = mnemo_in(
            d.path(),
            &[
                "train-ewc",
                "e.safetensors",
                "--data",
                small.to_str().unwrap(),
                "--epochs",
                "2",
                "--batch-size",
                "2",
                "--seed",
                "7",
                "-o",
                out,
                "-q",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let ck = Checkpoint::open(d.path().join(out)).unwrap();
        let names: Vec<String> = ck.names().map(str::to_string).collect();
        outputs.push(
            names
                .iter()
                .filter(|n| !n.ends_with("num_batches_tracked"))
                .map(|n| ck.to_f32(n).unwrap())
                .collect(),
        );
    }
    assert!(outputs[0] == outputs[1], "same seed, same weights");
}

#[test]
fn bad_zoo_options_exit_2_with_a_reason() {
    let d = workdir();
    for (arch, words) in [
        ("resnet18:classes=10", "unknown option 'classes'"),
        ("vit:image_size=30,patch_size=4", "divisible"),
        (
            "efficientnet_b0:width_mult=0",
            "width_mult must be positive",
        ),
    ] {
        let r = mnemo_in(d.path(), &["init", "--arch", arch, "-o", "m.safetensors"]);
        assert_eq!(r.code, 2, "{arch}");
        assert!(r.stderr.contains(words), "{arch}: {}", r.stderr);
    }
}

/// LoRA on Lite0's statically padded stem conv is refused, naming the module (PEFT cannot
/// wrap a `Conv2dStaticSamePadding` either); its 1×1 convs are fine.
#[test]
fn lora_on_a_statically_padded_conv_exits_2_naming_it() {
    let d = workdir();
    let r = mnemo_in(
        d.path(),
        &[
            "init",
            "--arch",
            "efficientnet_lite0:num_classes=4",
            "-o",
            "lite.safetensors",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let data = zoo("data_32.safetensors");
    let data = data.to_str().unwrap();
    let r = mnemo_in(
        d.path(),
        &[
            "lora-gate",
            "lite.safetensors",
            "--data",
            data,
            "--val",
            data,
            "--targets",
            "_conv_stem",
            "-o",
            "adapter",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("module '_conv_stem'") && r.stderr.contains("static_padding"),
        "{}",
        r.stderr
    );
    assert!(!d.path().join("adapter").exists());
}

/// `nn.Upsample` (nearest and bilinear, scale 2 and 3, a `size`): forward and the input
/// gradient of (y · upstream).sum(), through candle's autograd.
#[test]
fn upsample_matches_torch_forward_and_input_gradient() {
    let refs = Checkpoint::open(zoo("upsample.safetensors")).unwrap();
    let tensor = |n: &str| {
        let e = refs.entry(n).unwrap().shape.clone();
        Tensor::from_vec(refs.to_f32(n).unwrap(), e.as_slice(), &Device::Cpu).unwrap()
    };
    let mut checked = 0;
    for (key, layer) in [
        ("nearest_2", r#"{"type":"upsample","scale_factor":2}"#),
        (
            "nearest_3",
            r#"{"type":"upsample","scale_factor":3,"mode":"nearest"}"#,
        ),
        (
            "bilinear_2",
            r#"{"type":"upsample","scale_factor":2,"mode":"bilinear"}"#,
        ),
        (
            "bilinear_3",
            r#"{"type":"upsample","scale_factor":3,"mode":"bilinear"}"#,
        ),
        ("nearest_size", r#"{"type":"upsample","size":[7,9]}"#),
        (
            "bilinear_size",
            r#"{"type":"upsample","size":[7,9],"mode":"bilinear"}"#,
        ),
    ] {
        let spec = ArchSpec::parse(&format!("[{layer}]")).unwrap();
        let mut model = Model::init(&spec, 0, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&tensor("input")).unwrap();
        let y = model
            .forward(x.as_tensor(), None, Mode::Train, &mut Rng::new(0))
            .unwrap();
        let want = tensor(&format!("{key}.out"));
        assert_eq!(y.dims(), want.dims(), "{key}");
        let (abs, _) = errors(&flat(&y), &flat(&want));
        let grads = (y * tensor(&format!("{key}.upstream")))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = flat(grads.get(x.as_tensor()).unwrap());
        let (gabs, grel) = errors(&gx, &refs.to_f32(&format!("{key}.grad")).unwrap());
        eprintln!(
            "upsample {key}: out max abs {abs:.2e}; input grad max abs {gabs:.2e} (rel {grel:.2e})"
        );
        assert!(abs < 1e-6, "{key}: {abs}");
        assert!(grel < 1e-6, "{key}: {grel}");
        checked += 1;
    }
    assert_eq!(checked, 6);
}

const MT_ARCH: &str = "effnet_multitask:num_classes=5,num_labels=7,width_mult=0.1,depth_mult=0.5,decoder_channels=8,dropout=0,stochastic_depth=0";

/// The multi-task model against the same model built in torch (torchvision's features, the
/// heads as nn.Modules): every head's logits in train mode and in eval mode.
#[test]
fn multitask_heads_match_torch() {
    let refs = Checkpoint::open(zoo("multitask.safetensors")).unwrap();
    let spec = ArchSpec::parse(MT_ARCH).unwrap();
    assert_eq!(spec.head_names(), ["seg", "det", "cls"]);
    let d = workdir();
    let path = d.path().join("mt.safetensors");
    write_formula(&spec, &path);
    let data = Dataset::open(zoo("seg_32.safetensors")).unwrap();
    let (x, _) = data.batch(&[0, 1, 2, 3], &Device::Cpu).unwrap();
    for (head, shape) in [
        ("seg", vec![4, 1, 32, 32]),
        ("det", vec![4, 7]),
        ("cls", vec![4, 5]),
    ] {
        let (mut model, _) = Model::open(&path, None, &Device::Cpu).unwrap();
        let y = model
            .forward(&x, Some(head), Mode::Train, &mut Rng::new(0))
            .unwrap();
        assert_eq!(y.dims(), shape.as_slice(), "{head}");
        check_logits(
            &format!("multitask {head} train logits"),
            &flat(&y),
            &refs,
            &format!("mt.{head}.train_logits"),
        );
        let (mut model, _) = Model::open(&path, None, &Device::Cpu).unwrap();
        let names: Vec<String> = model.buffers.keys().cloned().collect();
        for name in names {
            let v = refs.to_f32(&format!("mt.calibrated.{name}")).unwrap();
            let t = Tensor::from_vec(v, model.buffers[&name].dims(), &Device::Cpu).unwrap();
            model.buffers.insert(name, t);
        }
        let y = model
            .forward(&x, Some(head), Mode::Eval, &mut Rng::new(0))
            .unwrap();
        let (_, rel) = check_logits(
            &format!("multitask {head} eval logits"),
            &flat(&y),
            &refs,
            &format!("mt.{head}.eval_logits"),
        );
        assert!(rel <= 1e-5, "{head}: eval rel {rel}");
    }
    // Without --head the model cannot run: the heads container names the choices.
    let (mut model, _) = Model::open(&path, None, &Device::Cpu).unwrap();
    let e = model
        .forward(&x, None, Mode::Eval, &mut Rng::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("seg, det, cls"), "{e}");
    assert!(model.choose_head(Some("box")).is_err());
}

/// `train-ewc --head seg --loss bce`, one SGD step, against torch's: every tensor after the
/// step, and the det and cls heads not moved at all.
#[test]
fn multitask_seg_step_matches_torch_and_leaves_the_other_heads() {
    let refs = Checkpoint::open(zoo("multitask.safetensors")).unwrap();
    let spec = ArchSpec::parse(MT_ARCH).unwrap();
    let d = workdir();
    let init = d.path().join("mt.safetensors");
    write_formula(&spec, &init);
    let data = zoo("seg_32.safetensors");
    let r = mnemo_in(
        d.path(),
        &[
            "train-ewc",
            "mt.safetensors",
            "--data",
            data.to_str().unwrap(),
            "--head",
            "seg",
            "--loss",
            "bce",
            "-o",
            "step.safetensors",
            "--no-shuffle",
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = Checkpoint::open(&init).unwrap();
    let after = Checkpoint::open(d.path().join("step.safetensors")).unwrap();
    let (mut err, mut scale, mut stat_rel, mut untouched) = (0.0f64, 0.0f64, 0.0f64, 0);
    for p in spec.params() {
        let want_name = format!("mt.step.{}", p.name);
        let other_head = p.name.starts_with("heads.det.") || p.name.starts_with("heads.cls.");
        match p.kind {
            ParamKind::Counter => {
                let want = if other_head { 3 } else { 4 };
                assert_eq!(after.to_i64(&p.name).unwrap(), vec![want], "{}", p.name);
            }
            ParamKind::RunningStat => {
                let (_, r) = errors(
                    &after.to_f32(&p.name).unwrap(),
                    &refs.to_f32(&want_name).unwrap(),
                );
                stat_rel = stat_rel.max(r);
            }
            ParamKind::Trainable => {
                let w0 = before.to_f32(&p.name).unwrap();
                let w1 = after.to_f32(&p.name).unwrap();
                if other_head {
                    assert_eq!(w1, w0, "{} moved", p.name);
                    assert_eq!(refs.to_f32(&want_name).unwrap(), w0, "torch: {}", p.name);
                    untouched += 1;
                    continue;
                }
                let ours: Vec<f32> = w1.iter().zip(&w0).map(|(a, b)| a - b).collect();
                let theirs: Vec<f32> = refs
                    .to_f32(&want_name)
                    .unwrap()
                    .iter()
                    .zip(&w0)
                    .map(|(a, b)| a - b)
                    .collect();
                let (abs, _) = errors(&ours, &theirs);
                err = err.max(abs);
                scale = scale.max(theirs.iter().map(|v| v.abs() as f64).fold(0.0, f64::max));
            }
        }
    }
    eprintln!(
        "multitask seg SGD step: update max abs err {err:.2e} (largest update {scale:.2e}, rel {:.2e}); running stats rel {stat_rel:.2e}; {untouched} det/cls tensors unmoved",
        err / scale
    );
    assert_eq!(untouched, 4);
    assert!(scale > 1e-4, "the step changed nothing");
    assert!(err / scale < 1e-3, "update error {}", err / scale);
    assert!(stat_rel < TOLERANCE, "running stats {stat_rel}");
}

/// AdamW with weight decay on one head: the others get no gradient and do not move (torch
/// skips parameters without a grad), and the saved optimizer state covers every parameter.
#[test]
fn adamw_on_one_head_leaves_the_others_and_saves_every_moment() {
    let d = workdir();
    let arch = "effnet_multitask:num_classes=4,num_labels=4,width_mult=0.1,depth_mult=0.34,decoder_channels=8";
    let r = mnemo_in(d.path(), &["init", "--arch", arch, "-o", "m.safetensors"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let data = zoo("data_32.safetensors");
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "train-ewc",
            "m.safetensors",
            "--data",
            data.to_str().unwrap(),
            "--head",
            "cls",
            "--optimizer",
            "adamw",
            "--weight-decay",
            "0.5",
            "--lr",
            "0.01",
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "-o",
            out,
            "-q",
        ];
        args.extend_from_slice(extra);
        let r = mnemo_in(d.path(), &args);
        assert_eq!(r.code, 0, "{}", r.stderr);
    };
    train("a.safetensors", &["--save-optimizer", "opt.safetensors"]);
    let before = Checkpoint::open(d.path().join("m.safetensors")).unwrap();
    let after = Checkpoint::open(d.path().join("a.safetensors")).unwrap();
    for name in before.names().filter(|n| n.starts_with("heads.")) {
        let same = before.to_f32(name).unwrap() == after.to_f32(name).unwrap();
        assert_eq!(same, !name.starts_with("heads.cls."), "{name}");
    }
    let opt = Checkpoint::open(d.path().join("opt.safetensors")).unwrap();
    assert!(opt.names().any(|n| n == "exp_avg/heads.seg.out.weight"));
    // The state loads back (moments for every parameter).
    train("b.safetensors", &["--init-optimizer", "opt.safetensors"]);
}

/// `init --from` a torchvision efficientnet_b0 state dict (F16, as saved by torch): exactly
/// its `features.*` tensors load into the multi-task trunk, converted; the classifier is
/// skipped and the heads keep their initialisation.
#[test]
fn init_from_a_torchvision_checkpoint_loads_exactly_the_features() {
    let d = workdir();
    let tv = zoo("tv_effnet_small.safetensors");
    let arch = "effnet_multitask:num_classes=5,width_mult=0.1,depth_mult=0.5,decoder_channels=8";
    let r = mnemo_in(
        d.path(),
        &[
            "init",
            "--arch",
            arch,
            "--from",
            tv.to_str().unwrap(),
            "-o",
            "m.safetensors",
            "--seed",
            "4",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r.last_json();
    let src = Checkpoint::open(&tv).unwrap();
    let features: Vec<&str> = src.names().filter(|n| n.starts_with("features.")).collect();
    assert_eq!(line["loaded"], features.len());
    assert_eq!(
        line["skipped"],
        serde_json::json!(["classifier.1.bias", "classifier.1.weight"])
    );
    let spec = ArchSpec::parse(arch).unwrap();
    let heads = spec
        .params()
        .iter()
        .filter(|p| p.name.starts_with("heads."))
        .count();
    assert_eq!(line["initialised_count"], heads);
    let r = mnemo_in(
        d.path(),
        &[
            "init",
            "--arch",
            arch,
            "-o",
            "plain.safetensors",
            "--seed",
            "4",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = Checkpoint::open(d.path().join("m.safetensors")).unwrap();
    let plain = Checkpoint::open(d.path().join("plain.safetensors")).unwrap();
    for name in got.names() {
        if name.ends_with("num_batches_tracked") {
            let want = if name.starts_with("features.") {
                &src
            } else {
                &plain
            };
            assert_eq!(
                got.to_i64(name).unwrap(),
                want.to_i64(name).unwrap(),
                "{name}"
            );
        } else if name.starts_with("features.") {
            assert_eq!(
                got.to_f32(name).unwrap(),
                src.to_f32(name).unwrap(),
                "{name}"
            );
        } else {
            assert_eq!(
                got.to_f32(name).unwrap(),
                plain.to_f32(name).unwrap(),
                "{name}"
            );
        }
    }
    // The source's hash is in the provenance.
    assert!(got.metadata()["mnemo.inputs"].contains(&src.content_hash().unwrap()));
    // Another width: the first matching name with another shape is refused, naming both
    // shapes, unless --skip-mismatched.
    let wide = "effnet_multitask:width_mult=0.25,depth_mult=0.5";
    let r = mnemo_in(
        d.path(),
        &[
            "init",
            "--arch",
            wide,
            "--from",
            tv.to_str().unwrap(),
            "-o",
            "w.safetensors",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(
            "tensor 'features.3.0.block.3.0.weight' has shape [8, 48, 1, 1], expected [16, 48, 1, 1]"
        ) && r.stderr.contains("--skip-mismatched"),
        "{}",
        r.stderr
    );
    assert!(!d.path().join("w.safetensors").exists());
    let r = mnemo_in(
        d.path(),
        &[
            "init",
            "--arch",
            wide,
            "--from",
            tv.to_str().unwrap(),
            "--skip-mismatched",
            "-o",
            "w.safetensors",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.last_json()["skipped_count"].as_u64().unwrap() > 2);
}
