//! Train-mode forward (batch statistics, running-stat updates) against torch,
//! and gradients reaching every parameter of every layer type.

mod common;
use candle_core::Device;
use common::*;
use mnemo::checkpoint::Checkpoint;
use mnemo::data::Dataset;
use mnemo::model::{ArchSpec, Layer, Mode, Model};
use mnemo::rng::Rng;
use serde_json::Value;

fn zoo_case() -> Value {
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    exp["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "zoo")
        .unwrap()
        .clone()
}

fn zoo_spec_without_dropout() -> ArchSpec {
    let mut spec = ArchSpec::parse(&fixture("zoo.arch.json")).unwrap();
    if let ArchSpec::Sequential(layers) = &mut spec {
        for l in layers.iter_mut() {
            if let Layer::Dropout { p } = l {
                *p = 0.0;
            }
        }
    }
    spec
}

#[test]
fn train_mode_batchnorm_matches_torch() {
    let case = zoo_case();
    let ckpt = Checkpoint::open(fixture("zoo.safetensors")).unwrap();
    let mut model = Model::load(&ckpt, &zoo_spec_without_dropout(), &Device::Cpu).unwrap();
    let data = Dataset::open(fixture("zoo_data.safetensors")).unwrap();
    let (x, _) = data
        .batch(&(0..8).collect::<Vec<_>>(), &Device::Cpu)
        .unwrap();
    let logits = model
        .forward(&x, None, Mode::Train, &mut Rng::new(0))
        .unwrap();
    let got: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    let want = case["train_logits_first8"].as_array().unwrap();
    for (g, w) in got.iter().zip(want) {
        for (a, b) in g.iter().zip(w.as_array().unwrap()) {
            let b = b.as_f64().unwrap() as f32;
            assert!((a - b).abs() < 1e-4, "train logits {a} vs torch {b}");
        }
    }
    for (name, want) in case["train_running_stats"].as_object().unwrap() {
        let got: Vec<f32> = model.buffers[name].to_vec1().unwrap();
        for (a, b) in got.iter().zip(want.as_array().unwrap()) {
            let b = b.as_f64().unwrap() as f32;
            assert!(
                (a - b).abs() < 1e-5 * (1.0 + b.abs()),
                "{name}: {a} vs torch {b}"
            );
        }
    }
    let layer = name_counter(&model);
    assert!(
        layer.iter().all(|(_, c)| *c > 0),
        "num_batches_tracked must advance: {layer:?}"
    );
}

fn name_counter(m: &Model) -> Vec<(String, i64)> {
    m.counters.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

#[test]
fn every_layer_type_receives_gradients() {
    // The zoo has every layer type; dropout stays on to exercise its mask path.
    let spec = ArchSpec::parse(&fixture("zoo.arch.json")).unwrap();
    let mut model = Model::init(&spec, 3, &Device::Cpu).unwrap();
    let data = Dataset::open(fixture("zoo_data.safetensors")).unwrap();
    let (x, _) = data
        .batch(&(0..16).collect::<Vec<_>>(), &Device::Cpu)
        .unwrap();
    let logits = model
        .forward(&x, None, Mode::Train, &mut Rng::new(1))
        .unwrap();
    // A loss touching every logit with distinct weights, so no gradient cancels by symmetry.
    let w = candle_core::Tensor::arange(0f32, logits.elem_count() as f32, &Device::Cpu)
        .unwrap()
        .reshape(logits.dims())
        .unwrap();
    let loss = (logits * w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in model.vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm {norm}"
        );
    }
}
