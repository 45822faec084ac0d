//! The methods a YAML configuration can name: mergekit 0.1.5's registry plus mnemo's extras.
//!
//! Each method is one file holding its [`Spec`]: the name, which inputs it takes (mergekit's
//! input contract), its parameters with their scope and default, and `build`, which turns the
//! parameters resolved for one tensor into a [`Kernel`]. Methods mnemo's streaming kernel
//! already has (linear, slerp, the task-vector family, model stock) build its plan; the others
//! implement [`WholeTensor`] on a tensor decoded to f32 (computed in f64). Adding a method is
//! one file and one line in [`REGISTRY`].

use super::Plan;
use std::collections::BTreeMap;

mod arcee_fusion;
mod breadcrumbs;
mod dare;
mod della;
mod ema;
mod fisher;
mod karcher;
mod linear;
mod model_stock;
mod multislerp;
mod nearswap;
mod nuslerp;
mod passthrough;
mod ram;
mod sce;
mod slerp;
mod sum;
mod task_arithmetic;
mod ties;

/// Every method a configuration may name, in mergekit's registry order, then mnemo's.
pub(crate) static REGISTRY: &[&Spec] = &[
    &multislerp::SPEC,
    &nearswap::SPEC,
    &ram::RAM,
    &ram::RAMPLUS_TL,
    &sce::SPEC,
    &linear::SPEC,
    &slerp::SPEC,
    &nuslerp::SPEC,
    &passthrough::SPEC,
    &model_stock::SPEC,
    &arcee_fusion::SPEC,
    &karcher::SPEC,
    &task_arithmetic::SPEC,
    &ties::SPEC,
    &dare::DARE_TIES,
    &dare::DARE_LINEAR,
    &breadcrumbs::BREADCRUMBS,
    &breadcrumbs::BREADCRUMBS_TIES,
    &della::DELLA,
    &della::DELLA_LINEAR,
    &ema::SPEC,
    &fisher::SPEC,
    &sum::SPEC,
];

/// mergekit 0.1.5 methods that mnemo does not implement yet (refused with this note).
pub(crate) const NOT_YET: &[(&str, &str)] = &[];

/// (name, formula) of every method a configuration may name, for help texts.
pub fn config_methods() -> Vec<(&'static str, &'static str)> {
    REGISTRY.iter().map(|s| (s.name, s.formula)).collect()
}

pub(crate) fn lookup(name: &str) -> Option<&'static Spec> {
    REGISTRY.iter().copied().find(|s| s.name == name)
}

/// Which inputs a parameter is bound to (mergekit's `ParameterScope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One value per tensor (from the global or slice parameters).
    Shared,
    /// One value per input, the base included.
    Input,
    /// One value per input other than the base.
    NonBase,
}

/// A parameter's type (values are checked and converted as pydantic does in lax mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Float,
    Bool,
    Int,
    /// A float that may be absent (passthrough's `scale`).
    OptFloat,
}

/// A resolved parameter value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Val {
    F(f64),
    B(bool),
    I(i64),
    Absent,
}

impl Val {
    pub(crate) fn f(self) -> f64 {
        match self {
            Val::F(x) => x,
            Val::I(i) => i as f64,
            Val::B(b) => f64::from(u8::from(b)),
            Val::Absent => f64::NAN,
        }
    }
    pub(crate) fn b(self) -> bool {
        matches!(self, Val::B(true))
    }
    pub(crate) fn i(self) -> i64 {
        match self {
            Val::I(i) => i,
            Val::F(x) => x as i64,
            Val::B(b) => i64::from(b),
            Val::Absent => 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ParamSpec {
    pub name: &'static str,
    pub ty: Ty,
    pub scope: Scope,
    /// `None`: required.
    pub default: Option<Val>,
}

pub(crate) const fn p(name: &'static str, ty: Ty, scope: Scope, default: Option<Val>) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        scope,
        default,
    }
}

/// mergekit's `BasePolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BasePolicy {
    /// The base is one more ordinary input.
    Ignored,
    Optional,
    Required,
}

/// mergekit's `InputContract`: counts of inputs (the base included) and of non-base inputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Contract {
    pub base: BasePolicy,
    pub min_inputs: usize,
    pub max_inputs: Option<usize>,
    pub min_non_base: usize,
    pub max_non_base: Option<usize>,
}

pub(crate) const fn contract(base: BasePolicy) -> Contract {
    Contract {
        base,
        min_inputs: 1,
        max_inputs: None,
        min_non_base: 0,
        max_non_base: None,
    }
}

/// The parameters resolved for one tensor.
#[derive(Clone, Debug, Default)]
pub(crate) struct Bound {
    pub shared: BTreeMap<&'static str, Val>,
    /// One map per kernel input (non-base inputs in order; for [`BasePolicy::Ignored`], every
    /// input, the base included).
    pub inputs: Vec<BTreeMap<&'static str, Val>>,
    /// The base's `Input`-scoped values (passthrough's scale), when there is a base.
    pub base: BTreeMap<&'static str, Val>,
}

impl Bound {
    pub(crate) fn shared(&self, name: &str) -> Val {
        self.shared.get(name).copied().unwrap_or(Val::Absent)
    }
    /// A per-input parameter for every kernel input.
    pub(crate) fn each(&self, name: &str) -> Vec<Val> {
        self.inputs
            .iter()
            .map(|m| m.get(name).copied().unwrap_or(Val::Absent))
            .collect()
    }
    pub(crate) fn each_f(&self, name: &str) -> Vec<f64> {
        self.each(name).into_iter().map(Val::f).collect()
    }
}

/// What runs for one tensor.
pub(crate) enum Kernel {
    /// mnemo's streaming kernel (chunked, the whole tensor never decoded at once).
    Stream(Plan),
    /// A method on the whole tensor, decoded to f32.
    Whole(Box<dyn WholeTensor>),
}

/// A method computed on whole tensors.
pub(crate) trait WholeTensor: Send + Sync {
    /// `inputs`: the kernel inputs (non-base, in configuration order); `base` when the method
    /// has one; `shape` of every input. Returns the merged values (or why not).
    fn merge(
        &self,
        inputs: &[&[f32]],
        base: Option<&[f32]>,
        shape: &[usize],
    ) -> Result<Vec<f32>, String>;

    /// [`WholeTensor::merge`] for the tensor `name` (methods with seeded draws use it).
    fn merge_named(
        &self,
        _name: &str,
        inputs: &[&[f32]],
        base: Option<&[f32]>,
        shape: &[usize],
    ) -> Result<Vec<f32>, String> {
        self.merge(inputs, base, shape)
    }
}

/// A method as a configuration sees it.
pub(crate) struct Spec {
    pub name: &'static str,
    /// The formula, for help texts and the README's table.
    pub formula: &'static str,
    pub contract: Contract,
    pub params: &'static [ParamSpec],
    /// The kernel for one tensor with `n` kernel inputs (validated counts) and these values.
    pub build: fn(n: usize, b: &Bound) -> Result<Kernel, String>,
}

pub(crate) fn unit(what: &str, v: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("{what} must be in [0, 1], not {v}"))
    }
}

/// f64 L2 norm.
pub(crate) fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

pub(crate) fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

pub(crate) fn narrow(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}
