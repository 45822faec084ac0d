//! Attaching a LoRA adapter to a model for training: the base weights are frozen (batchnorm
//! runs on its running statistics), A and B (with DoRA the magnitudes, with
//! `modules_to_save` the saved modules' own tensors) become the model's only `params`, so
//! the engine, the optimizer and the state file train adapters unchanged; each target
//! module's output gains scale·B·A·dropout(x), or DoRA's rescaled output. The model sees
//! this only through its [`ModelAdapter`] hook.

use super::{
    a_name, b_name, dora_rescale, fold, magnitude_name, row_norms, Adapter, LoraConfig,
    ModuleAdapter, TargetKind,
};
use crate::checkpoint::OwnedTensor;
use crate::error::{MnemoError, Result};
use crate::model::ops::dropout;
use crate::model::{Mode, Model, ModelAdapter, ParamKind, ParamSpec};
use crate::rng::Rng;
use candle_core::{Tensor, Var};
use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

/// A LoRA adapter attached to a model.
pub struct LoraAttachment {
    pub config: LoraConfig,
    pub modules: BTreeMap<String, TargetKind>,
    /// The base model's trainable weights, no longer trained.
    pub frozen: BTreeMap<String, Tensor>,
    /// Each module's factor on B·A (`LoraConfig::scale_of`, resolved once: the forward
    /// pass reads it per module and pass).
    scales: BTreeMap<String, f64>,
    /// The tensors of `modules_to_save`: still among the model's `params`, trained in
    /// full and saved with the adapter.
    pub saved: Vec<ParamSpec>,
}

impl ModelAdapter for LoraAttachment {
    fn frozen(&self, name: &str) -> Option<&Tensor> {
        self.frozen.get(name)
    }

    /// `y` plus the LoRA term scale·B(A(dropout(x))) when module `name` is adapted. With
    /// DoRA, PEFT's `DoraLinearLayer.forward`: the bias-free output and the LoRA term are
    /// scaled per output by m / ‖W + scale·B·A‖ (row norms, detached: DoRA's §4.3), so
    /// y = bias + m/‖·‖ ⊙ (W·x + scale·B·A·dropout(x)).
    fn module_output(
        &self,
        model: &Model,
        name: &str,
        x: &Tensor,
        y: Tensor,
        mode: Mode,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let Some(kind) = self.modules.get(name) else {
            return Ok(y);
        };
        let c = |e: candle_core::Error| MnemoError::Compute {
            context: format!("LoRA of module {name}"),
            source: e,
        };
        let a = model.weight(&a_name(name))?;
        let b = model.weight(&b_name(name))?;
        let xd = dropout(x, self.config.dropout, mode, rng).map_err(c)?;
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
        let delta = (delta * self.scales[name]).map_err(c)?;
        if !self.config.dora {
            return (y + delta).map_err(c);
        }
        let w = &self.frozen[&format!("{name}.weight")];
        let bias = self.frozen.get(&format!("{name}.bias"));
        let m = model.weight(&magnitude_name(name))?;
        let norm = b
            .matmul(a)
            .and_then(|ba| ba * self.scales[name])
            .and_then(|ba| w + ba)
            .and_then(|v| v.sqr())
            .and_then(|v| v.sum(1))
            .and_then(|v| v.sqrt())
            .map_err(c)?
            .detach();
        let scale = m.div(&norm).map_err(c)?;
        let plain = match bias {
            Some(bias) => y.broadcast_sub(bias).map_err(c)?,
            None => y,
        };
        let out = (plain + delta)
            .and_then(|v| v.broadcast_mul(&scale))
            .map_err(c)?;
        match bias {
            Some(bias) => out.broadcast_add(bias).map_err(c),
            None => Ok(out),
        }
    }

    /// The adapter's weights and the base's batchnorm state.
    fn manifest(&self, spec: Vec<ParamSpec>) -> Vec<ParamSpec> {
        let mut out: Vec<ParamSpec> = spec
            .into_iter()
            .filter(|p| p.kind != ParamKind::Trainable)
            .collect();
        for (m, kind) in &self.modules {
            for (name, shape) in [
                (a_name(m), kind.a_shape(self.config.rank_of(m))),
                (b_name(m), kind.b_shape(self.config.rank_of(m))),
            ] {
                out.push(ParamSpec {
                    name,
                    shape,
                    kind: ParamKind::Trainable,
                });
            }
            if self.config.dora {
                out.push(ParamSpec {
                    name: magnitude_name(m),
                    shape: kind.b_shape(1)[..1].to_vec(),
                    kind: ParamKind::Trainable,
                });
            }
        }
        out.extend(self.saved.iter().cloned());
        out
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn attachment(model: &Model) -> Option<&LoraAttachment> {
    model
        .adapter
        .as_ref()
        .and_then(|a| a.as_any().downcast_ref::<LoraAttachment>())
}

/// Attaches a LoRA adapter to `modules` of `model`: the base weights are frozen and only
/// the adapter's A and B train, with the modules of `config.modules_to_save` trained in
/// full. A starts kaiming-uniform(a=√5) (U(±1/√fan_in), drawn from `seed`), B at zero, a
/// saved module as the base's copy, as PEFT initialises them — or all from `init`.
pub fn attach(
    model: &mut Model,
    config: LoraConfig,
    modules: BTreeMap<String, TargetKind>,
    init: Option<&Adapter>,
    seed: u64,
) -> Result<()> {
    if model.adapter.is_some() {
        return Err(MnemoError::InvalidTargets {
            reason: "the model already has an adapter".into(),
        });
    }
    let saved = super::resolve_saved(&model.spec, &config.modules_to_save, false)?;
    if let Some(m) = modules
        .keys()
        .find(|m| saved.iter().any(|p| p.name.starts_with(&format!("{m}."))))
    {
        return Err(MnemoError::InvalidTargets {
            reason: format!(
                "module '{m}' is both adapted and in modules_to_save {:?}",
                config.modules_to_save
            ),
        });
    }
    let mut frozen = BTreeMap::new();
    for (k, v) in std::mem::take(&mut model.params) {
        if !saved.iter().any(|p| p.name == k) {
            frozen.insert(k, v.as_tensor().detach());
            continue;
        }
        let var = match init.and_then(|ad| ad.saved.get(&k)) {
            Some((shape, values)) => Var::from_tensor(
                &Tensor::from_slice(values, shape.as_slice(), &model.device)
                    .map_err(MnemoError::compute(format!("placing '{k}'")))?,
            )
            .map_err(MnemoError::compute("creating var"))?,
            // A fresh copy: the base's own tensor is never trained.
            None => Var::from_tensor(
                &v.as_tensor()
                    .copy()
                    .map_err(MnemoError::compute("copying"))?,
            )
            .map_err(MnemoError::compute("creating var"))?,
        };
        model.params.insert(k, var);
    }
    let mut rng = Rng::new(seed);
    for (m, kind) in &modules {
        let r = config.rank_of(m);
        let (a, b) = match init.and_then(|ad| ad.modules.get(m)) {
            Some(w) => (w.a.clone(), w.b.clone()),
            None => {
                let bound = 1.0 / (kind.a_fan_in() as f64).sqrt();
                let n: usize = kind.a_shape(r).iter().product();
                let a = (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect();
                (a, vec![0.0; kind.b_shape(r).iter().product()])
            }
        };
        let mut tensors = vec![
            (a_name(m), kind.a_shape(r), a),
            (b_name(m), kind.b_shape(r), b),
        ];
        if config.dora {
            let TargetKind::Linear { out_features, .. } = *kind else {
                return Err(MnemoError::InvalidTargets {
                    reason: format!(
                        "module '{m}' is a conv2d; DoRA is trained on linear modules only"
                    ),
                });
            };
            // PEFT's dora_init: m = ‖W + scale·B·A‖ per row, ‖W‖ while B is zero.
            let magnitude = match init.and_then(|ad| ad.magnitudes.get(m)) {
                Some(v) => v.clone(),
                None => {
                    let w = &frozen[&format!("{m}.weight")];
                    let mut v: Vec<f32> = w
                        .flatten_all()
                        .and_then(|t| t.to_vec1())
                        .map_err(MnemoError::compute(format!("reading '{m}.weight'")))?;
                    let folded = ModuleAdapter {
                        a: tensors[0].2.clone(),
                        a_shape: tensors[0].1.clone(),
                        b: tensors[1].2.clone(),
                        b_shape: tensors[1].1.clone(),
                    };
                    let shape = w.dims().to_vec();
                    fold(
                        &mut v,
                        &shape,
                        &folded,
                        config.scale_of(m),
                        Path::new("<model>"),
                        m,
                    )?;
                    let norms: Vec<f32> = row_norms(&v, out_features)
                        .into_iter()
                        .map(|n| n as f32)
                        .collect();
                    // DoRA divides by each row's norm: a zero row would make NaN.
                    if let Some(i) = norms.iter().position(|n| *n <= 0.0) {
                        return Err(MnemoError::InvalidTargets {
                            reason: format!("module '{m}': row {i} of its weight is zero, and DoRA divides by each row's norm"),
                        });
                    }
                    norms
                }
            };
            tensors.push((magnitude_name(m), vec![out_features], magnitude));
        }
        for (name, shape, v) in tensors {
            let t = Tensor::from_vec(v, shape.as_slice(), &model.device)
                .map_err(MnemoError::compute(format!("placing '{name}'")))?;
            let var = Var::from_tensor(&t).map_err(MnemoError::compute("creating var"))?;
            model.params.insert(name, var);
        }
    }
    let scales = modules
        .keys()
        .map(|m| (m.clone(), config.scale_of(m)))
        .collect();
    model.adapter = Some(Box::new(LoraAttachment {
        config,
        modules,
        frozen,
        scales,
        saved,
    }));
    Ok(())
}

/// The attached LoRA adapter's current weights (`None` without one).
pub fn adapter_of(model: &Model) -> Result<Option<Adapter>> {
    let Some(l) = attachment(model) else {
        return Ok(None);
    };
    let snap = model.snapshot()?;
    let modules = l
        .modules
        .iter()
        .map(|(m, kind)| {
            let r = l.config.rank_of(m);
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
    let magnitudes = if l.config.dora {
        l.modules
            .keys()
            .map(|m| (m.clone(), snap.values[&magnitude_name(m)].clone()))
            .collect()
    } else {
        BTreeMap::new()
    };
    let saved = l
        .saved
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                (p.shape.clone(), snap.values[&p.name].clone()),
            )
        })
        .collect();
    Ok(Some(Adapter {
        config: l.config.clone(),
        modules,
        magnitudes,
        saved,
    }))
}

/// The full checkpoint of the model's spec; with a LoRA adapter attached, the base weights
/// with the adapter folded in (W + scale·B·A, DoRA's rows rescaled to their magnitudes).
pub fn merged_tensors(model: &Model) -> Result<Vec<OwnedTensor<'static>>> {
    let Some(l) = attachment(model) else {
        return model.tensors();
    };
    let adapter = adapter_of(model)?.expect("attached");
    let mut snap = model.snapshot()?;
    for (name, t) in &l.frozen {
        let v: Vec<f32> = t
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(MnemoError::compute(format!("reading '{name}'")))?;
        snap.values.insert(name.clone(), v);
    }
    for (m, w) in &adapter.modules {
        let scale = l.scales[m];
        let wname = format!("{m}.weight");
        let shape = l.frozen[&wname].dims().to_vec();
        let values = snap.values.get_mut(&wname).expect("frozen weight");
        fold(values, &shape, w, scale, Path::new("<model>"), &wname)?;
        if let Some(mag) = adapter.magnitudes.get(m) {
            dora_rescale(values, shape[0], mag);
        }
    }
    model.in_stored_dtypes(snap.tensors(&model.spec.params(), ""))
}
