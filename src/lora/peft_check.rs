//! What PEFT would refuse in an `adapter_config.json`, refused here too, and PEFT's rule for
//! which modules `target_modules` selects (`check_target_module_exists`): a string is a
//! regular expression matched against the whole module name (only plain names are accepted
//! here: no regex engine), a list selects a module whose name is an entry or ends with
//! `.entry`.

use crate::{MnemoError, Result};
use serde_json::Value;
use std::path::Path;

fn bad(path: &Path, reason: String) -> MnemoError {
    MnemoError::InvalidAdapter {
        path: path.to_path_buf(),
        reason,
    }
}

/// Fields whose type PEFT relies on, and fields this implementation does not reproduce:
/// - switches (`use_rslora`, `use_dora`, `fan_in_fan_out`, `inference_mode`) must be true
///   or false (PEFT would take the string "yes" as true, "no" too: refused rather than
///   guessed);
/// - `lora_dropout` must be a number in [0, 1), `lora_alpha` a finite number;
/// - `layers_to_transform`, `layers_pattern`, `target_parameters`, `megatron_config`,
///   `layer_replication` and `trainable_token_indices` change which modules are adapted
///   and are refused unless null or empty (honouring them partly would fold other modules
///   than PEFT does).
pub fn check_fields(path: &Path, v: &Value) -> Result<()> {
    for key in ["use_rslora", "use_dora", "fan_in_fan_out", "inference_mode"] {
        if let Some(x) = v.get(key).filter(|x| !x.is_null() && !x.is_boolean()) {
            return Err(bad(path, format!("'{key}' = {x} is not true or false")));
        }
    }
    if let Some(x) = v.get("lora_dropout").filter(|x| !x.is_null()) {
        if !x.as_f64().is_some_and(|d| (0.0..1.0).contains(&d)) {
            return Err(bad(
                path,
                format!("'lora_dropout' = {x} is not a number in [0, 1)"),
            ));
        }
    }
    if let Some(x) = v.get("lora_alpha") {
        if !x.as_f64().is_some_and(f64::is_finite) {
            return Err(bad(
                path,
                format!("'lora_alpha' = {x} is not a finite number"),
            ));
        }
    }
    for key in [
        "layers_to_transform",
        "layers_pattern",
        "target_parameters",
        "megatron_config",
        "layer_replication",
        "trainable_token_indices",
    ] {
        let set = match v.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(bad(path, format!("'{key}' = {} is not supported", v[key])));
        }
    }
    Ok(())
}

/// One of PEFT's module selections (`target_modules`, `exclude_modules`) as it reads them.
#[derive(Clone, Debug)]
pub enum Rule {
    /// A list: a module is selected when its name is an entry or ends with `.entry`.
    Names(Vec<String>),
    /// A string: a regular expression the whole name must match (`re.fullmatch`).
    Regex(fancy_regex::Regex),
}

impl Rule {
    fn selects(&self, name: &str) -> bool {
        match self {
            Rule::Regex(r) => r.is_match(name).unwrap_or(false),
            Rule::Names(list) => list
                .iter()
                .any(|e| name == e || name.ends_with(&format!(".{e}"))),
        }
    }

    fn read(path: &Path, key: &str, v: &Value) -> Result<Rule> {
        match v {
            Value::Array(a) => a
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Rule::Names)
                .ok_or_else(|| bad(path, format!("'{key}' must be a list of names or a string"))),
            Value::String(s) if s == "all-linear" => Err(bad(
                path,
                format!("'{key}' = \"all-linear\": PEFT expands it to the module names before saving; list them"),
            )),
            Value::String(s) => fancy_regex::Regex::new(&format!("^(?:{s})$"))
                .map(Rule::Regex)
                .map_err(|e| bad(path, format!("'{key}' = \"{s}\" is not a regular expression: {e}"))),
            _ => Err(bad(path, format!("'{key}' must be a list of names or a string"))),
        }
    }
}

/// `target_modules` and `exclude_modules` as PEFT reads them: a module is adapted when the
/// first selects it and the second does not.
#[derive(Clone, Debug)]
pub struct Targets {
    pub include: Rule,
    pub exclude: Option<Rule>,
}

/// Reads `target_modules` (a list of names, or a regular expression matched against the
/// whole module name, as PEFT's `re.fullmatch`) and `exclude_modules` (the same forms).
pub fn targets(path: &Path, v: &Value) -> Result<Targets> {
    let include = match v.get("target_modules") {
        Some(t) if !t.is_null() => Rule::read(path, "target_modules", t)?,
        _ => return Err(bad(path, "'target_modules' is missing".into())),
    };
    let exclude = match v.get("exclude_modules") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(e) => Some(Rule::read(path, "exclude_modules", e)?),
    };
    Ok(Targets { include, exclude })
}

/// Whether PEFT adapts the module `name`.
pub fn selects(t: &Targets, name: &str) -> bool {
    t.include.selects(name) && !t.exclude.as_ref().is_some_and(|e| e.selects(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peft_matching_and_refusals() {
        let p = Path::new("a/adapter_config.json");
        let t = targets(p, &json!({"target_modules": ["q_proj", "0"]})).unwrap();
        assert!(selects(&t, "layers.3.q_proj") && selects(&t, "0") && selects(&t, "x.0"));
        assert!(!selects(&t, "xq_proj") && !selects(&t, "10"));
        // A string is a regular expression over the whole name, as re.fullmatch.
        let t = targets(
            p,
            &json!({"target_modules": r"model\.layers\.[01]\..*(q|v)_proj"}),
        )
        .unwrap();
        assert!(selects(&t, "model.layers.1.self_attn.v_proj"));
        assert!(!selects(&t, "model.layers.2.self_attn.v_proj"));
        assert!(!selects(&t, "x.model.layers.1.self_attn.v_proj"));
        let t = targets(p, &json!({"target_modules": "0"})).unwrap();
        assert!(selects(&t, "0") && !selects(&t, "x.0"));
        // exclude_modules: names (suffix match) or a regular expression.
        let t = targets(
            p,
            &json!({"target_modules": ["q_proj", "v_proj"], "exclude_modules": ["layers.0.self_attn.q_proj"]}),
        )
        .unwrap();
        assert!(!selects(&t, "model.layers.0.self_attn.q_proj"));
        assert!(selects(&t, "model.layers.0.self_attn.v_proj"));
        let t = targets(
            p,
            &json!({"target_modules": ["v_proj"], "exclude_modules": r".*\.1\..*"}),
        )
        .unwrap();
        assert!(!selects(&t, "model.layers.1.self_attn.v_proj"));
        assert!(selects(&t, "model.layers.0.self_attn.v_proj"));
        assert!(targets(p, &json!({"target_modules": "(unclosed"})).is_err());
        assert!(targets(p, &json!({"target_modules": "all-linear"})).is_err());
        assert!(targets(p, &json!({"target_modules": [1]})).is_err());
        for bad_cfg in [
            json!({"use_rslora": "yes"}),
            json!({"use_rslora": 1}),
            json!({"fan_in_fan_out": "false"}),
            json!({"lora_dropout": "0.1"}),
            json!({"lora_dropout": 1.0}),
            json!({"layers_to_transform": [0]}),
            json!({"layers_to_transform": 0}),
            json!({"trainable_token_indices": [1, 2]}),
        ] {
            assert!(check_fields(p, &bad_cfg).is_err(), "{bad_cfg}");
        }
        check_fields(
            p,
            &json!({"use_rslora": false, "layers_to_transform": null, "modules_to_save": null, "lora_dropout": 0.05}),
        )
        .unwrap();
    }
}
