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
/// - `layers_to_transform`, `layers_pattern`, `exclude_modules`, `target_parameters`,
///   `modules_to_save`, `megatron_config`, `layer_replication` and
///   `trainable_token_indices` change which modules are adapted or saved
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
        "exclude_modules",
        "target_parameters",
        "modules_to_save",
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

/// `target_modules` as PEFT reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// A list: a module is selected when its name is an entry or ends with `.entry`.
    Names(Vec<String>),
    /// A string: a regular expression matched against the whole name (plain names only).
    Pattern(String),
}

/// Reads `target_modules`; a string with regular-expression syntax (or PEFT's
/// "all-linear") is refused.
pub fn targets(path: &Path, v: &Value) -> Result<Targets> {
    match v.get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Targets::Names)
            .ok_or_else(|| bad(path, "'target_modules' must be a list of names".into())),
        Some(Value::String(s)) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '-');
            if !plain || s == "all-linear" {
                return Err(bad(
                    path,
                    format!("'target_modules' = \"{s}\": regular expressions and \"all-linear\" are not supported; list the modules"),
                ));
            }
            Ok(Targets::Pattern(s.clone()))
        }
        _ => Err(bad(path, "'target_modules' is missing".into())),
    }
}

/// Whether PEFT adapts the module `name`.
pub fn selects(t: &Targets, name: &str) -> bool {
    match t {
        Targets::Pattern(p) => name == p,
        Targets::Names(list) => list
            .iter()
            .any(|e| name == e || name.ends_with(&format!(".{e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peft_matching_and_refusals() {
        let p = Path::new("a/adapter_config.json");
        let t = Targets::Names(vec!["q_proj".into(), "0".into()]);
        assert!(selects(&t, "layers.3.q_proj") && selects(&t, "0") && selects(&t, "x.0"));
        assert!(!selects(&t, "xq_proj") && !selects(&t, "10"));
        assert!(selects(&Targets::Pattern("0".into()), "0"));
        assert!(!selects(&Targets::Pattern("0".into()), "x.0"));
        assert!(targets(p, &json!({"target_modules": ".*proj"})).is_err());
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
            json!({"exclude_modules": ["a"]}),
            json!({"modules_to_save": ["head"]}),
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
