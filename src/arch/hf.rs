//! Decoder-only language models from a Hugging Face `config.json` (`--arch llama:PATH`,
//! and any model folder holding one): `LlamaForCausalLM`, `MistralForCausalLM` and
//! `Qwen2ForCausalLM`, read with each class's defaults for the fields `save_pretrained`
//! leaves out (it writes only what differs from them). The tree's names are exactly
//! transformers': `model.embed_tokens`, `model.layers.N.self_attn.q_proj`, ...,
//! `model.norm`, `lm_head`, so a folder `transformers` wrote loads as it is. A tied
//! `lm_head` (`tie_word_embeddings`) holds no tensor, as in the state dict transformers
//! saves. Anything these classes would compute differently from what mnemo runs (another
//! activation, a rope type mnemo lacks) is refused by name.

use super::zoo::named;
use super::{AttentionConf, DecoderConf, Layer, RopeScaling};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Most decoder layers a config may ask for (far beyond any released model).
const MAX_LAYERS: usize = 10_000;

/// The model types this reader knows, by `model_type`.
pub const MODEL_TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];

/// The `config.json` a path names: the file itself, or the one inside a folder.
pub fn config_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    }
}

/// Whether `text` is a transformers config (it names a `model_type`), so that a model
/// folder without mnemo metadata is read through it (and one of a type this reader does
/// not know is refused naming that type, not as a file without an arch).
pub fn is_transformers_config(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .ok()
        .is_some_and(|v| v.get("model_type").is_some_and(Value::is_string))
}

/// The module tree of the causal LM a config describes.
pub fn causal_lm(text: &str) -> std::result::Result<Layer, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("config.json is not JSON: {e}"))?;
    let Some(m) = v.as_object() else {
        return Err("config.json is not a JSON object".into());
    };
    let cfg = Config(m);
    let model_type = cfg.str("model_type")?.ok_or(
        "config.json has no 'model_type' (transformers writes one; expected llama, mistral or qwen2)",
    )?;
    let d = Defaults::of(&model_type).ok_or_else(|| {
        format!(
            "model_type '{model_type}' is not supported (supported: {})",
            MODEL_TYPES.join(", ")
        )
    })?;
    let act = cfg.str("hidden_act")?.unwrap_or_else(|| "silu".into());
    if act != "silu" {
        return Err(format!(
            "hidden_act '{act}' is not supported (these models use silu)"
        ));
    }
    let vocab = cfg.size("vocab_size", d.vocab_size)?;
    let hidden = cfg.size("hidden_size", d.hidden_size)?;
    let heads = cfg.size("num_attention_heads", d.num_attention_heads)?;
    let kv = cfg
        .opt_size("num_key_value_heads")?
        .unwrap_or(match d.kv_heads {
            Some(k) => k,
            None => heads,
        });
    if heads == 0 {
        return Err("num_attention_heads must be positive".into());
    }
    let head_dim = match cfg.opt_size("head_dim")? {
        Some(h) => h,
        None => {
            if !hidden.is_multiple_of(heads) {
                return Err(format!(
                    "hidden_size ({hidden}) is not divisible by num_attention_heads ({heads}) and no head_dim is given"
                ));
            }
            hidden / heads
        }
    };
    let layers = cfg.size("num_hidden_layers", d.num_hidden_layers)?;
    if layers == 0 || layers > MAX_LAYERS {
        return Err(format!(
            "num_hidden_layers must be in 1..={MAX_LAYERS}, got {layers}"
        ));
    }
    let (rope_theta, rope_scaling) = rope(&cfg)?;
    let attention_bias = cfg.bool("attention_bias", false)?;
    let (qkv_bias, o_bias) = if model_type == "qwen2" {
        (true, false)
    } else {
        (attention_bias, attention_bias)
    };
    let windows = sliding_windows(&cfg, &model_type, layers)?;
    let attention = AttentionConf {
        hidden_size: hidden,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim,
        rope_theta,
        rope_scaling,
        qkv_bias,
        o_bias,
        attention_dropout: cfg.float("attention_dropout", 0.0)?,
        sliding_window: None,
    };
    let block = DecoderConf {
        attention,
        intermediate_size: cfg.size("intermediate_size", d.intermediate_size)?,
        rms_norm_eps: cfg.float("rms_norm_eps", d.rms_norm_eps)?,
        mlp_bias: model_type == "llama" && cfg.bool("mlp_bias", false)?,
    };
    let blocks = windows
        .into_iter()
        .map(|w| {
            let mut b = block.clone();
            b.attention.sliding_window = w;
            Layer::DecoderLayer(b)
        })
        .collect();
    let lm_head = if cfg.bool("tie_word_embeddings", d.tie_word_embeddings)? {
        Layer::TiedLinear {
            weight: "model.embed_tokens.weight".into(),
        }
    } else {
        Layer::Linear {
            in_features: hidden,
            out_features: vocab,
            bias: false,
        }
    };
    let model = Layer::Module {
        children: named(vec![
            (
                "embed_tokens",
                Layer::Embedding {
                    num_embeddings: vocab,
                    embedding_dim: hidden,
                    init_std: cfg.float("initializer_range", crate::arch::HF_INIT_STD)?,
                },
            ),
            ("layers", Layer::Sequential { layers: blocks }),
            (
                "norm",
                Layer::RmsNorm {
                    hidden_size: hidden,
                    eps: cfg.float("rms_norm_eps", d.rms_norm_eps)?,
                },
            ),
        ]),
    };
    Ok(Layer::Module {
        children: named(vec![("model", model), ("lm_head", lm_head)]),
    })
}

/// Each layer's sliding window: transformers 5's `layer_types` when given
/// (`sliding_attention` layers use `sliding_window`), else Mistral's window on every layer,
/// or Qwen2's on the layers from `max_window_layers` on when `use_sliding_window` is set.
fn sliding_windows(
    cfg: &Config,
    model_type: &str,
    layers: usize,
) -> std::result::Result<Vec<Option<usize>>, String> {
    let window = cfg.opt_size("sliding_window")?;
    if window == Some(0) {
        return Err("'sliding_window' must be positive".into());
    }
    if let Some(types) = cfg.get("layer_types") {
        let types = types
            .as_array()
            .ok_or("'layer_types' must be a list of strings")?;
        if types.len() != layers {
            return Err(format!(
                "'layer_types' has {} entries for {layers} layers",
                types.len()
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(None),
                Some("sliding_attention") => match window {
                    Some(w) => Ok(Some(w)),
                    None => Err(
                        "'layer_types' has sliding_attention but 'sliding_window' is null".into(),
                    ),
                },
                _ => Err(format!(
                    "'layer_types' entry {t} is not supported (full_attention or sliding_attention)"
                )),
            })
            .collect();
    }
    Ok(match model_type {
        "mistral" => vec![window; layers],
        "qwen2" if cfg.bool("use_sliding_window", false)? => {
            let from = cfg.size("max_window_layers", 28)?;
            (0..layers)
                .map(|i| if i >= from { window } else { None })
                .collect()
        }
        _ => vec![None; layers],
    })
}

/// rope_theta and the scaling, from transformers 4's `rope_theta` + `rope_scaling` or
/// transformers 5's `rope_parameters`.
fn rope(cfg: &Config) -> std::result::Result<(f64, Option<RopeScaling>), String> {
    let params = match cfg.0.get("rope_parameters") {
        Some(Value::Object(p)) => Some(p),
        Some(Value::Null) | None => None,
        Some(_) => return Err("'rope_parameters' must be an object".into()),
    };
    let theta = match params.and_then(|p| p.get("rope_theta")) {
        Some(v) => num(v, "rope_parameters.rope_theta")?,
        None => cfg.float("rope_theta", 10000.0)?,
    };
    let legacy = match cfg.0.get("rope_scaling") {
        Some(Value::Object(s)) => Some(s),
        Some(Value::Null) | None => None,
        Some(_) => return Err("'rope_scaling' must be an object or null".into()),
    };
    let scaling = params.or(legacy);
    // Rotary embeddings on part of each head (Phi, StableLM) are not these models'.
    for factor in [
        cfg.0.get("partial_rotary_factor"),
        scaling.and_then(|s| s.get("partial_rotary_factor")),
    ]
    .into_iter()
    .flatten()
    {
        if !factor.is_null() && factor.as_f64() != Some(1.0) {
            return Err(format!(
                "partial_rotary_factor {factor} is not supported (rotary embeddings on the whole head only)"
            ));
        }
    }
    let Some(s) = scaling else {
        return Ok((theta, None));
    };
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let field = |k: &str| -> std::result::Result<f64, String> {
        match s.get(k) {
            Some(v) => num(v, &format!("rope_scaling.{k}")),
            None => Err(format!("rope_scaling of type '{kind}' needs '{k}'")),
        }
    };
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: field("factor")?,
        }),
        "llama3" => {
            let orig = field("original_max_position_embeddings")?;
            if !(orig >= 1.0 && orig.fract() == 0.0 && orig <= 1e12) {
                return Err(format!(
                    "rope_scaling.original_max_position_embeddings must be a positive integer, got {orig}"
                ));
            }
            Some(RopeScaling::Llama3 {
                factor: field("factor")?,
                low_freq_factor: field("low_freq_factor")?,
                high_freq_factor: field("high_freq_factor")?,
                original_max_position_embeddings: orig as usize,
            })
        }
        other => {
            return Err(format!(
                "rope type '{other}' is not supported (supported: default, linear, llama3)"
            ))
        }
    };
    Ok((theta, scaling))
}

fn num(v: &Value, key: &str) -> std::result::Result<f64, String> {
    v.as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| format!("'{key}' must be a finite number, got {v}"))
}

/// Each class's defaults for the fields `save_pretrained` may leave out.
struct Defaults {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    /// None: as many as the attention heads.
    kv_heads: Option<usize>,
    rms_norm_eps: f64,
    tie_word_embeddings: bool,
}

impl Defaults {
    fn of(model_type: &str) -> Option<Defaults> {
        Some(match model_type {
            "llama" => Defaults {
                vocab_size: 32000,
                hidden_size: 4096,
                intermediate_size: 11008,
                num_hidden_layers: 32,
                num_attention_heads: 32,
                kv_heads: None,
                rms_norm_eps: 1e-6,
                tie_word_embeddings: false,
            },
            "mistral" => Defaults {
                vocab_size: 32000,
                hidden_size: 4096,
                intermediate_size: 14336,
                num_hidden_layers: 32,
                num_attention_heads: 32,
                kv_heads: Some(8),
                rms_norm_eps: 1e-6,
                tie_word_embeddings: false,
            },
            "qwen2" => Defaults {
                vocab_size: 151936,
                hidden_size: 4096,
                intermediate_size: 22016,
                num_hidden_layers: 32,
                num_attention_heads: 32,
                kv_heads: Some(32),
                rms_norm_eps: 1e-6,
                tie_word_embeddings: false,
            },
            _ => return None,
        })
    }
}

/// Typed reads of a config's fields, each error naming the field.
struct Config<'a>(&'a Map<String, Value>);

impl Config<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn str(&self, key: &str) -> std::result::Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("'{key}' must be a string, got {v}")),
        }
    }

    fn opt_size(&self, key: &str) -> std::result::Result<Option<usize>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= (1 << 40) => Ok(Some(n as usize)),
                _ => Err(format!(
                    "'{key}' must be a non-negative integer of sane size, got {v}"
                )),
            },
        }
    }

    fn size(&self, key: &str, default: usize) -> std::result::Result<usize, String> {
        Ok(self.opt_size(key)?.unwrap_or(default))
    }

    fn float(&self, key: &str, default: f64) -> std::result::Result<f64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => num(v, key),
        }
    }

    fn bool(&self, key: &str, default: bool) -> std::result::Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("'{key}' must be true or false, got {v}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ArchSpec;

    const TINY: &str = r#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 16,
        "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "tie_word_embeddings": true}"#;

    #[test]
    fn names_and_shapes_are_transformers() {
        let spec = ArchSpec::Tree(causal_lm(TINY).unwrap());
        spec.validate().unwrap();
        let names: Vec<(String, Vec<usize>)> = spec
            .params()
            .into_iter()
            .map(|p| (p.name, p.shape))
            .collect();
        assert_eq!(names[0], ("model.embed_tokens.weight".into(), vec![64, 16]));
        assert_eq!(
            names[1],
            (
                "model.layers.0.self_attn.q_proj.weight".into(),
                vec![16, 16]
            )
        );
        assert_eq!(
            names[2],
            ("model.layers.0.self_attn.k_proj.weight".into(), vec![8, 16])
        );
        assert_eq!(
            names[5],
            ("model.layers.0.mlp.gate_proj.weight".into(), vec![24, 16])
        );
        assert_eq!(
            names[8],
            ("model.layers.0.input_layernorm.weight".into(), vec![16])
        );
        assert_eq!(names.last().unwrap().0, "model.norm.weight");
        // Tied: no lm_head tensor.
        assert_eq!(names.len(), 1 + 2 * 9 + 1);
    }

    #[test]
    fn qwen2_has_qkv_biases_and_untied_head() {
        let text = TINY.replace("llama", "qwen2").replace("true", "false");
        let spec = ArchSpec::Tree(causal_lm(&text).unwrap());
        let names: Vec<String> = spec.params().into_iter().map(|p| p.name).collect();
        assert!(names.contains(&"model.layers.0.self_attn.q_proj.bias".to_string()));
        assert!(!names.contains(&"model.layers.0.self_attn.o_proj.bias".to_string()));
        assert_eq!(names.last().unwrap(), "lm_head.weight");
    }

    #[test]
    fn unsupported_configs_are_refused_by_name() {
        for (edit, words) in [
            (r#""model_type": "gemma""#, "model_type 'gemma'"),
            (r#""hidden_act": "gelu""#, "hidden_act 'gelu'"),
            (
                r#""rope_scaling": {"rope_type": "yarn", "factor": 4}"#,
                "rope type 'yarn'",
            ),
            (r#""num_hidden_layers": 0"#, "num_hidden_layers"),
            (r#""vocab_size": -1"#, "'vocab_size'"),
            (
                r#""rope_scaling": {"rope_type": "linear"}"#,
                "needs 'factor'",
            ),
        ] {
            let key = edit.split(':').next().unwrap();
            let mut m: Map<String, Value> = serde_json::from_str(TINY).unwrap();
            let e: Map<String, Value> = serde_json::from_str(&format!("{{{edit}}}")).unwrap();
            m.remove(key.trim_matches('"'));
            m.extend(e);
            let err = causal_lm(&Value::Object(m).to_string()).unwrap_err();
            assert!(err.contains(words), "{edit}: {err}");
        }
    }
}
