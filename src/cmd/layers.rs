//! Layered settings for the command line, without the command line: the names, kinds and
//! values of settings, where each comes from, and in which order the layers win.
//!
//! A setting is one flag (or positional argument) of one subcommand, named as on the
//! command line without its dashes (`lambda`, `batch-size`). It can come from, lowest to
//! highest precedence:
//!
//! 1. the default (clap's);
//! 2. a TOML file (`--config FILE`): a table per subcommand named as typed, nested
//!    subcommands joined by dashes (`[train-ewc]`, `[data-split]`, `[lora-merge]`), plus
//!    `[global]` for the global flags (`device`, `quiet`);
//! 3. an environment variable `MNEMO_<TABLE>_<KEY>`, upper-case, dashes as underscores
//!    (`MNEMO_TRAIN_EWC_LAMBDA`, `MNEMO_DATA_SPLIT_RELABEL`, `MNEMO_GLOBAL_DEVICE`);
//! 4. the command line itself;
//! 5. `--set KEY=VALUE`.
//!
//! Every name is checked (all tables of a file, every `MNEMO_*` variable): an unknown one is
//! an error that names it and where it was found. Values are checked for the subcommand
//! that runs. The clap side (`src/cmd/config.rs`) builds the [`Schema`] from the command
//! tree, validates values with each flag's own parser and rebuilds the command line.

use mnemo::{MnemoError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The table of the global flags.
pub const GLOBAL: &str = "global";
/// Every environment variable with this prefix is a setting (and is checked).
pub const ENV_PREFIX: &str = "MNEMO_";

/// How a setting takes its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A flag without a value (`--nesterov`): TOML true/false, env/--set true/false/1/0.
    Switch,
    /// One value.
    One,
    /// Several values (a repeatable flag or one with several values): a TOML array,
    /// comma-separated in env and --set.
    Many,
}

/// A setting's value from one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Switch(bool),
    /// One value (`Kind::One`) or any number (`Kind::Many`), as command-line words.
    Words(Vec<String>),
}

/// Where a setting's effective value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag,
    Set,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file:{}", p.display()),
            Source::Env(v) => write!(f, "env:{v}"),
            Source::Flag => f.write_str("flag"),
            Source::Set => f.write_str("set"),
        }
    }
}

/// Every table and the kind of each of its keys.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    pub tables: BTreeMap<String, BTreeMap<String, Kind>>,
}

/// A subcommand path as a table name: `["data", "split"]` → `data-split`.
pub fn table_name<S: AsRef<str>>(path: &[S]) -> String {
    path.iter()
        .map(|s| s.as_ref())
        .collect::<Vec<_>>()
        .join("-")
}

/// The environment variable of a table's key: (`train-ewc`, `batch-size`) →
/// `MNEMO_TRAIN_EWC_BATCH_SIZE`.
pub fn env_var(table: &str, key: &str) -> String {
    format!("{ENV_PREFIX}{}_{}", upper(table), upper(key))
}

fn upper(s: &str) -> String {
    s.to_ascii_uppercase().replace('-', "_")
}

/// Keys are flag names; `batch_size` is accepted for `batch-size`.
pub fn normalize_key(k: &str) -> String {
    k.trim().replace('_', "-")
}

impl Schema {
    fn keys(&self, table: &str) -> Option<&BTreeMap<String, Kind>> {
        self.tables.get(table)
    }

    /// The kind of `key` in `table`, or an error naming `origin` that says what is known.
    fn kind(&self, origin: &str, table: &str, key: &str) -> Result<Kind> {
        let keys = self
            .keys(table)
            .ok_or_else(|| config_err(origin, unknown_table(self, table)))?;
        if let Some(k) = keys.get(key) {
            return Ok(*k);
        }
        let mut reason = format!("{table} has no setting '{key}'");
        if table != GLOBAL && self.keys(GLOBAL).is_some_and(|g| g.contains_key(key)) {
            reason.push_str(&format!(
                " ('{key}' is a global flag: set it in [global], MNEMO_GLOBAL_{} or with --set)",
                upper(key)
            ));
        } else if let Some(s) = closest(key, keys.keys().map(String::as_str)) {
            reason.push_str(&format!("; did you mean '{s}'?"));
        }
        Err(config_err(origin, reason))
    }

    /// The (table, key) an environment variable names, if any.
    pub fn env_target(&self, var: &str) -> Result<(String, String)> {
        let rest = var.strip_prefix(ENV_PREFIX).unwrap_or(var);
        let mut best: Option<&str> = None;
        for (table, keys) in &self.tables {
            let prefix = format!("{}_", upper(table));
            if let Some(k) = rest.strip_prefix(&prefix) {
                let key = k.to_ascii_lowercase().replace('_', "-");
                if keys.contains_key(&key) {
                    return Ok((table.clone(), key));
                }
                if best.is_none_or(|b| b.len() < table.len()) {
                    best = Some(table);
                }
            }
        }
        let reason = match best {
            Some(table) => {
                let k = rest[table.len() + 1..].to_ascii_lowercase().replace('_', "-");
                let mut r = format!("not a mnemo setting: {table} has no setting '{k}'");
                if let Some(s) = closest(&k, self.tables[table].keys().map(String::as_str)) {
                    r.push_str(&format!("; did you mean {}?", env_var(table, s)));
                }
                r
            }
            None => format!(
                "not a mnemo setting: variables {ENV_PREFIX}* are read as MNEMO_<SUBCOMMAND>_<FLAG> \
                 (e.g. MNEMO_TRAIN_EWC_LAMBDA, MNEMO_GLOBAL_DEVICE), and no subcommand matches"
            ),
        };
        Err(config_err(var, reason))
    }
}

fn unknown_table(schema: &Schema, table: &str) -> String {
    let mut r = format!("unknown table [{table}]");
    if schema
        .tables
        .keys()
        .any(|t| t.starts_with(&format!("{table}-")))
    {
        r.push_str(&format!(
            " (nested subcommands have dashed tables: {})",
            schema
                .tables
                .keys()
                .filter(|t| t.starts_with(&format!("{table}-")))
                .map(|t| format!("[{t}]"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    } else if let Some(s) = closest(table, schema.tables.keys().map(String::as_str)) {
        r.push_str(&format!("; did you mean [{s}]?"));
    }
    r
}

fn config_err(origin: impl Into<String>, reason: impl Into<String>) -> MnemoError {
    MnemoError::Config {
        origin: origin.into(),
        reason: reason.into(),
    }
}

/// The most similar name within edit distance 2 (for "did you mean").
fn closest<'a>(word: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .map(|n| (edit_distance(word, n), n))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A parsed `--config` file: its tables, by name.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub tables: BTreeMap<String, toml::Table>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = mnemo::fsutil::read_to_string(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let origin = path.display().to_string();
        let root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| config_err(&origin, format!("invalid TOML: {e}")))?;
        let mut tables = BTreeMap::new();
        for (name, v) in root {
            match v {
                toml::Value::Table(t) => {
                    tables.insert(name, t);
                }
                _ => {
                    return Err(config_err(
                        &origin,
                        format!(
                            "top-level key '{name}': settings go in a table, [global] or \
                             [<subcommand>] (e.g. [train-ewc])"
                        ),
                    ))
                }
            }
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            tables,
        })
    }

    /// Every table and key must exist in the schema.
    pub fn check_names(&self, schema: &Schema) -> Result<()> {
        let origin = self.path.display().to_string();
        for (table, keys) in &self.tables {
            if schema.keys(table).is_none() {
                return Err(config_err(&origin, unknown_table(schema, table)));
            }
            for key in keys.keys() {
                let key = normalize_key(key);
                schema.kind(&format!("{origin}: [{table}] {key}"), table, &key)?;
            }
        }
        Ok(())
    }

    /// The settings of one table, with their kinds checked: (key, value).
    pub fn values(&self, schema: &Schema, table: &str) -> Result<Vec<(String, Value)>> {
        let origin = self.path.display().to_string();
        let mut out = Vec::new();
        if let Some(t) = self.tables.get(table) {
            for (key, v) in t {
                let key = normalize_key(key);
                let at = format!("{origin}: [{table}] {key}");
                let kind = schema.kind(&at, table, &key)?;
                out.push((key, from_toml(&at, kind, v)?));
            }
        }
        Ok(out)
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

fn scalar(at: &str, v: &toml::Value) -> Result<String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(_) => Err(config_err(
            at,
            "expected a value, found a boolean (true/false is for flags without a value)",
        )),
        other => Err(config_err(
            at,
            format!("expected a string or a number, found {}", type_name(other)),
        )),
    }
}

/// A TOML value as a setting of `kind`; the error names `at` (file, table and key).
pub fn from_toml(at: &str, kind: Kind, v: &toml::Value) -> Result<Value> {
    match kind {
        Kind::Switch => match v {
            toml::Value::Boolean(b) => Ok(Value::Switch(*b)),
            other => Err(config_err(
                at,
                format!("expected true or false, found {}", type_name(other)),
            )),
        },
        Kind::One => match v {
            toml::Value::Array(_) => Err(config_err(
                at,
                "expected one value, found an array (this flag takes one value)",
            )),
            v => Ok(Value::Words(vec![scalar(at, v)?])),
        },
        Kind::Many => match v {
            toml::Value::Array(items) => Ok(Value::Words(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| scalar(&format!("{at}[{i}]"), x))
                    .collect::<Result<_>>()?,
            )),
            v => Ok(Value::Words(vec![scalar(at, v)?])),
        },
    }
}

/// A text value (environment variable or `--set`) as a setting of `kind`: switches take
/// true/false/1/0, lists are comma-separated.
pub fn from_text(at: &str, kind: Kind, s: &str) -> Result<Value> {
    match kind {
        Kind::Switch => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Value::Switch(true)),
            "false" | "0" => Ok(Value::Switch(false)),
            _ => Err(config_err(
                at,
                format!("expected true, false, 1 or 0, found '{s}'"),
            )),
        },
        Kind::One => Ok(Value::Words(vec![s.to_string()])),
        Kind::Many => Ok(Value::Words(if s.is_empty() {
            Vec::new()
        } else {
            s.split(',').map(str::to_string).collect()
        })),
    }
}

/// The file, environment and --set layers of one key (each `None` when that layer is silent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layered {
    pub file: Option<(PathBuf, Value)>,
    pub env: Option<(String, Value)>,
    pub set: Option<Value>,
}

/// The layers of the running subcommand's table and of [global], by table then key.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    pub by_key: BTreeMap<(String, String), Layered>,
}

impl Layers {
    /// Reads the layers for `table` (and [global]): checks every name in `file` and `env`
    /// (all `MNEMO_*` variables, whatever subcommand they are for) and the kinds of the
    /// values that apply. `set` holds the `--set KEY=VALUE` words, keys of `table` or of
    /// [global].
    pub fn read(
        schema: &Schema,
        table: &str,
        file: Option<&ConfigFile>,
        env: &[(String, String)],
        set: &[String],
    ) -> Result<Layers> {
        let mut layers = Layers::default();
        let tables = [GLOBAL, table];
        if let Some(f) = file {
            f.check_names(schema)?;
            for t in tables {
                for (key, v) in f.values(schema, t)? {
                    layers.slot(t, &key).file = Some((f.path.clone(), v));
                }
            }
        }
        for (var, value) in env {
            let (t, key) = schema.env_target(var)?;
            if tables.contains(&t.as_str()) {
                let kind = schema.kind(var, &t, &key)?;
                let v = from_text(&format!("{var}={value}"), kind, value)?;
                layers.slot(&t, &key).env = Some((var.clone(), v));
            }
        }
        for word in set {
            let at = format!("--set {word}");
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| config_err(&at, "expected KEY=VALUE (e.g. --set lambda=100)"))?;
            let key = normalize_key(k);
            let t = if schema.keys(table).is_some_and(|m| m.contains_key(&key)) {
                table
            } else if schema.keys(GLOBAL).is_some_and(|m| m.contains_key(&key)) {
                GLOBAL
            } else {
                // kind() fails here, with the subcommand's keys in its message.
                return Err(schema
                    .kind(&at, table, &key)
                    .err()
                    .unwrap_or_else(|| config_err(&at, "unknown setting")));
            };
            let kind = schema.kind(&at, t, &key)?;
            layers.slot(t, &key).set = Some(from_text(&at, kind, v)?);
        }
        Ok(layers)
    }

    fn slot(&mut self, table: &str, key: &str) -> &mut Layered {
        self.by_key
            .entry((table.to_string(), key.to_string()))
            .or_default()
    }

    pub fn get(&self, table: &str, key: &str) -> Option<&Layered> {
        self.by_key.get(&(table.to_string(), key.to_string()))
    }
}

/// Precedence: --set over the command line over the environment over the file over the
/// default. `flag` is the command line's value when it gave one; `None` is the default.
pub fn effective<T: Clone>(
    layered: Option<&Layered>,
    flag: Option<T>,
    convert: impl Fn(&Value) -> T,
) -> (Option<T>, Source) {
    if let Some(l) = layered {
        if let Some(v) = &l.set {
            return (Some(convert(v)), Source::Set);
        }
    }
    if let Some(v) = flag {
        return (Some(v), Source::Flag);
    }
    if let Some(l) = layered {
        if let Some((var, v)) = &l.env {
            return (Some(convert(v)), Source::Env(var.clone()));
        }
        if let Some((path, v)) = &l.file {
            return (Some(convert(v)), Source::File(path.clone()));
        }
    }
    (None, Source::Default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        let mut s = Schema::default();
        s.tables.insert(
            GLOBAL.into(),
            [("device".into(), Kind::One), ("quiet".into(), Kind::Switch)].into(),
        );
        s.tables.insert(
            "train-ewc".into(),
            [
                ("lambda".into(), Kind::One),
                ("penalty".into(), Kind::Many),
                ("nesterov".into(), Kind::Switch),
                ("batch-size".into(), Kind::One),
            ]
            .into(),
        );
        s.tables.insert(
            "data-split".into(),
            [("relabel".into(), Kind::Switch)].into(),
        );
        s
    }

    fn file(text: &str) -> ConfigFile {
        ConfigFile::parse(Path::new("run.toml"), text).unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(table_name(&["data", "split"]), "data-split");
        assert_eq!(
            env_var("train-ewc", "batch-size"),
            "MNEMO_TRAIN_EWC_BATCH_SIZE"
        );
        let s = schema();
        assert_eq!(
            s.env_target("MNEMO_TRAIN_EWC_BATCH_SIZE").unwrap(),
            ("train-ewc".into(), "batch-size".into())
        );
        assert_eq!(
            s.env_target("MNEMO_GLOBAL_DEVICE").unwrap(),
            ("global".into(), "device".into())
        );
        let e = s
            .env_target("MNEMO_TRAIN_EWC_LAMDA")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("MNEMO_TRAIN_EWC_LAMDA") && e.contains("MNEMO_TRAIN_EWC_LAMBDA"),
            "{e}"
        );
        assert!(s.env_target("MNEMO_NOPE").is_err());
    }

    #[test]
    fn file_layer_checks_names_and_kinds() {
        let s = schema();
        let f = file("[train-ewc]\nlambda = 1000\npenalty = ['a:b', 'c:d']\nnesterov = true\nbatch_size = 8\n[global]\ndevice = 'cpu'\n");
        let l = Layers::read(&s, "train-ewc", Some(&f), &[], &[]).unwrap();
        let get = |t: &str, k: &str| l.get(t, k).unwrap().file.clone().unwrap().1;
        assert_eq!(
            get("train-ewc", "lambda"),
            Value::Words(vec!["1000".into()])
        );
        assert_eq!(
            get("train-ewc", "penalty"),
            Value::Words(vec!["a:b".into(), "c:d".into()])
        );
        assert_eq!(get("train-ewc", "nesterov"), Value::Switch(true));
        assert_eq!(
            get("train-ewc", "batch-size"),
            Value::Words(vec!["8".into()])
        );
        assert_eq!(get("global", "device"), Value::Words(vec!["cpu".into()]));
        for (text, msg) in [
            ("[train-ewc]\nlamda = 1", "did you mean 'lambda'"),
            ("[train-ewc]\ndevice = 'cpu'", "global flag"),
            ("[train-ewk]\nlambda = 1", "did you mean [train-ewc]"),
            ("[data.split]\nrelabel = true", "[data-split]"),
            ("lambda = 1", "top-level key 'lambda'"),
            ("[train-ewc]\nlambda = [1, 2]", "found an array"),
            ("[train-ewc]\nlambda = true", "found a boolean"),
            ("[train-ewc]\nnesterov = 1", "expected true or false"),
            ("[train-ewc]\npenalty = [true]", "penalty[0]"),
        ] {
            let e = match ConfigFile::parse(Path::new("run.toml"), text) {
                Ok(f) => Layers::read(&s, "train-ewc", Some(&f), &[], &[])
                    .unwrap_err()
                    .to_string(),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("run.toml") && e.contains(msg), "{text}: {e}");
        }
        // Another table's names are checked, not its values' kinds... but names, yes.
        let f = file("[data-split]\nrelabel = 3\n");
        assert!(Layers::read(&s, "train-ewc", Some(&f), &[], &[]).is_ok());
        let f = file("[data-split]\nrelabl = true\n");
        assert!(Layers::read(&s, "train-ewc", Some(&f), &[], &[]).is_err());
    }

    #[test]
    fn env_and_set_layers() {
        let s = schema();
        let env = vec![
            ("MNEMO_TRAIN_EWC_PENALTY".to_string(), "a:b,c:d".to_string()),
            ("MNEMO_TRAIN_EWC_NESTEROV".to_string(), "0".to_string()),
            (
                "MNEMO_DATA_SPLIT_RELABEL".to_string(),
                "nonsense".to_string(),
            ),
        ];
        let l = Layers::read(&s, "train-ewc", None, &env, &["lambda=5".into()]).unwrap();
        assert_eq!(
            l.get("train-ewc", "penalty")
                .unwrap()
                .env
                .as_ref()
                .unwrap()
                .1,
            Value::Words(vec!["a:b".into(), "c:d".into()])
        );
        assert_eq!(
            l.get("train-ewc", "nesterov")
                .unwrap()
                .env
                .as_ref()
                .unwrap()
                .1,
            Value::Switch(false)
        );
        assert_eq!(
            l.get("train-ewc", "lambda").unwrap().set,
            Some(Value::Words(vec!["5".into()]))
        );
        // The same variable is checked when its subcommand runs.
        let e = Layers::read(&s, "data-split", None, &env, &[]).unwrap_err();
        assert!(e.to_string().contains("MNEMO_DATA_SPLIT_RELABEL"), "{e}");
        for bad in ["lambda", "lamda=3", "quiet=maybe"] {
            let e = Layers::read(&s, "train-ewc", None, &[], &[bad.into()]).unwrap_err();
            assert!(e.to_string().contains(&format!("--set {bad}")), "{e}");
        }
    }

    #[test]
    fn precedence() {
        let l = Layered {
            file: Some(("f.toml".into(), Value::Words(vec!["1".into()]))),
            env: Some(("MNEMO_X_Y".into(), Value::Words(vec!["2".into()]))),
            set: Some(Value::Words(vec!["4".into()])),
        };
        let conv = |v: &Value| match v {
            Value::Words(w) => w[0].clone(),
            Value::Switch(b) => b.to_string(),
        };
        assert_eq!(
            effective(Some(&l), Some("3".to_string()), conv).1,
            Source::Set
        );
        let l2 = Layered {
            set: None,
            ..l.clone()
        };
        assert_eq!(
            effective(Some(&l2), Some("3".to_string()), conv),
            (Some("3".into()), Source::Flag)
        );
        assert_eq!(
            effective(Some(&l2), None, conv),
            (Some("2".into()), Source::Env("MNEMO_X_Y".into()))
        );
        let l3 = Layered { env: None, ..l2 };
        assert_eq!(
            effective(Some(&l3), None, conv),
            (Some("1".into()), Source::File("f.toml".into()))
        );
        assert_eq!(
            effective(None, None::<String>, conv),
            (None, Source::Default)
        );
    }
}
