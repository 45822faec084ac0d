//! Layered configuration on the clap side, and `mnemo config show`.
//!
//! `parse` turns argv into the final `ArgMatches`:
//! 1. clap parses argv as typed (a missing required argument is forgiven for now: the
//!    file or the environment may supply it);
//! 2. `resolve` reads the layers (`cmd/layers.rs`: the `--config` file, `MNEMO_*`
//!    variables, `--set`), asks clap which arguments the command line gave
//!    (`ArgMatches::value_source`), picks each setting's value by precedence (file <
//!    environment < command line < --set), checks every value that came from a layer with
//!    the flag's own value parser (so an error names the file and key, the variable, or
//!    the --set word), and rebuilds a complete command line: `mnemo <path> --flag=value ...
//!    -- <positionals>`, without --config and --set;
//! 3. when a layer contributed anything, clap parses that command line (which also becomes
//!    the provenance's `mnemo.command`, so a written file records the effective settings);
//!    otherwise the first parse stands, untouched.
//!
//! The typed `Args` structs are then built from those matches as before.

use super::layers::{effective, ConfigFile, Kind, Layers, Schema, Source, Value, GLOBAL};
use super::{Global, HelpExtra, Status, EXIT_PLAIN};
use anyhow::Context;
use clap::parser::ValueSource;
use clap::ArgAction;
use serde_json::json;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("the effective settings of train-ewc under a file, with their sources", "mnemo config show --config run.toml train-ewc"),
        ("as an aligned table, with a command line and an environment variable on top", "MNEMO_TRAIN_EWC_EPOCHS=5 mnemo config show --table --config run.toml train-ewc --lambda 10"),
        ("a nested subcommand's table is [data-split]", "mnemo config show --config run.toml data split"),
        ("a training run configured by a file, one value overridden", "mnemo train-ewc --config run.toml --set lambda=100 model.safetensors -o model2.safetensors"),
    ],
    exit_status: EXIT_PLAIN,
};

/// `mnemo config` (its description is the `Config` variant's in src/main.rs).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print a subcommand's effective settings: each flag, its value and where it came from
    /// (default, file:PATH, env:VAR, flag, set), as JSON Lines {"key","value","source"}.
    Show {
        /// An aligned table instead of JSON Lines.
        #[arg(long)]
        table: bool,
        /// The subcommand, and optionally its arguments (e.g. `train-ewc --lambda 5`,
        /// `data split`).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<OsString>,
    },
    /// Every leaf subcommand's flags as JSON Lines {"path","key","long","numeric","kind",
    /// "positional"}: what tests/hostile.rs walks to feed every numeric flag hostile values.
    #[command(hide = true)]
    Keys,
}

/// One configurable argument of a subcommand (or a global flag): every argument but help,
/// version and hidden test hooks.
#[derive(Clone, Debug)]
pub struct KeyArg {
    pub key: String,
    pub id: String,
    pub kind: Kind,
    /// `--long`, for flags; `None` for positional arguments.
    pub long: Option<String>,
    /// For a switch: the flag is written when the value is this (false for SetFalse).
    pub when: bool,
    /// Values are numbers (shown as JSON numbers).
    pub numeric: bool,
    arg: clap::Arg,
}

/// The command tree as settings: every leaf subcommand's table and [global].
pub struct Tree {
    pub schema: Schema,
    pub tables: BTreeMap<String, Vec<KeyArg>>,
}

fn key_arg(a: &clap::Arg) -> Option<KeyArg> {
    // Hidden flags are test hooks, not settings.
    if a.is_hide_set() {
        return None;
    }
    let (kind, when) = match a.get_action() {
        ArgAction::SetTrue => (Kind::Switch, true),
        ArgAction::SetFalse => (Kind::Switch, false),
        ArgAction::Append => (Kind::Many, true),
        ArgAction::Set => {
            let many = a
                .get_num_args()
                .is_some_and(|r| r.max_values() > 1 || r.min_values() > 1);
            (if many { Kind::Many } else { Kind::One }, true)
        }
        // Help, version and counters are not settings.
        _ => return None,
    };
    let id = a.get_id().as_str().to_string();
    let long = a.get_long().map(str::to_string);
    let key = long.clone().unwrap_or_else(|| id.replace('_', "-"));
    use std::any::TypeId;
    let t = a.get_value_parser().type_id();
    let numeric = [
        TypeId::of::<f64>(),
        TypeId::of::<f32>(),
        TypeId::of::<u64>(),
        TypeId::of::<i64>(),
        TypeId::of::<usize>(),
        TypeId::of::<u32>(),
        TypeId::of::<i32>(),
    ]
    .iter()
    .any(|x| t == *x);
    Some(KeyArg {
        key,
        id,
        kind,
        long,
        when,
        numeric,
        arg: a.clone(),
    })
}

/// Global flags that are not settings themselves.
const NOT_SETTINGS: &[&str] = &["config", "set"];

pub fn tree() -> Tree {
    let mut root = crate::command();
    root.build();
    let mut tables = BTreeMap::new();
    tables.insert(
        GLOBAL.to_string(),
        root.get_arguments()
            .filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str()))
            .filter_map(key_arg)
            .collect(),
    );
    fn walk(c: &clap::Command, path: &mut Vec<String>, out: &mut BTreeMap<String, Vec<KeyArg>>) {
        for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
            path.push(s.get_name().to_string());
            if s.has_subcommands() {
                walk(s, path, out);
            } else {
                out.insert(
                    super::layers::table_name(path),
                    s.get_arguments()
                        .filter(|a| !a.is_global_set())
                        .filter_map(key_arg)
                        .collect(),
                );
            }
            path.pop();
        }
    }
    walk(&root, &mut Vec::new(), &mut tables);
    let schema = Schema {
        tables: tables
            .iter()
            .map(|(t, keys)| {
                (
                    t.clone(),
                    keys.iter().map(|k| (k.key.clone(), k.kind)).collect(),
                )
            })
            .collect(),
    };
    Tree { schema, tables }
}

/// A setting's effective value.
#[derive(Clone, Debug, PartialEq)]
pub enum Final {
    Switch(bool),
    Words(Vec<OsString>),
}

fn from_layer(v: &Value) -> Final {
    match v {
        Value::Switch(b) => Final::Switch(*b),
        Value::Words(w) => Final::Words(w.iter().map(OsString::from).collect()),
    }
}

/// One setting of the resolved command.
#[derive(Clone, Debug)]
pub struct Setting {
    pub table: String,
    pub arg: KeyArg,
    /// `None`: no value (no default, not given).
    pub value: Option<Final>,
    pub source: Source,
}

pub struct Resolution {
    /// The subcommand path (`["data", "split"]`); empty when argv names none.
    pub path: Vec<String>,
    /// The subcommand's settings, then the global ones.
    pub settings: Vec<Setting>,
    /// The effective command line.
    pub argv: Vec<OsString>,
    /// Whether a layer (file, environment, --set) contributed anything.
    pub changed: bool,
}

/// The `MNEMO_*` environment variables (all of them are settings and are checked).
pub fn mnemo_env() -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str().map(str::to_string) else {
            continue;
        };
        if !k.starts_with(super::layers::ENV_PREFIX) {
            continue;
        }
        let v = v
            .into_string()
            .map_err(|_| anyhow::anyhow!("{k}: the value is not valid UTF-8"))?;
        out.push((k, v));
    }
    out.sort();
    Ok(out)
}

/// The argument's value as clap parsed it from the command line, if it came from there.
fn cli_value(m: &clap::ArgMatches, k: &KeyArg) -> Option<Final> {
    if m.value_source(&k.id) != Some(ValueSource::CommandLine) {
        return None;
    }
    Some(match k.kind {
        Kind::Switch => Final::Switch(k.when),
        _ => Final::Words(
            m.get_raw(&k.id)
                .map(|r| r.map(OsStr::to_os_string).collect())
                .unwrap_or_default(),
        ),
    })
}

fn default_value(m: &clap::ArgMatches, k: &KeyArg) -> Option<Final> {
    if m.value_source(&k.id) != Some(ValueSource::DefaultValue) {
        return None;
    }
    Some(match k.kind {
        Kind::Switch => Final::Switch(!k.when),
        _ => Final::Words(
            m.get_raw(&k.id)
                .map(|r| r.map(OsStr::to_os_string).collect())
                .unwrap_or_default(),
        ),
    })
}

/// Checks one value with the flag's own parser; clap's message, on one line.
fn check_value(k: &KeyArg, word: &OsStr) -> Result<(), String> {
    let mut probe = clap::Arg::new("value")
        .long(k.key.clone())
        .action(ArgAction::Set)
        .allow_hyphen_values(true)
        .value_parser(k.arg.get_value_parser().clone());
    if let Some(names) = k.arg.get_value_names() {
        probe = probe.value_name(names[0].clone());
    }
    let cmd = clap::Command::new("mnemo")
        .color(clap::ColorChoice::Never)
        .arg(probe);
    let mut flag = OsString::from(format!("--{}=", k.key));
    flag.push(word);
    match cmd.try_get_matches_from([OsString::from("mnemo"), flag]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let text = text.split("\n\nFor more information").next().unwrap_or("");
            let text = text.strip_prefix("error: ").unwrap_or(text);
            Err(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" "))
        }
    }
}

/// Where a layered value was written, for an error message.
fn origin(s: &Setting, set: &[String]) -> String {
    match &s.source {
        Source::File(p) => format!("{}: [{}] {}", p.display(), s.table, s.arg.key),
        Source::Env(v) => v.clone(),
        Source::Set => set
            .iter()
            .rev()
            .find(|w| {
                w.split_once('=')
                    .is_some_and(|(k, _)| super::layers::normalize_key(k) == s.arg.key)
            })
            .map(|w| format!("--set {w}"))
            .unwrap_or_else(|| format!("--set {}", s.arg.key)),
        _ => s.arg.key.clone(),
    }
}

/// Reads the layers for the command argv names and rebuilds its command line.
pub fn resolve(argv: &[OsString], env: &[(String, String)]) -> anyhow::Result<Resolution> {
    let tree = tree();
    // A fresh tree: ignore_errors reaches nested subcommands only when set before building.
    let m = crate::command()
        .ignore_errors(true)
        .try_get_matches_from(argv)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
    let mut path = Vec::new();
    let mut leaf = &m;
    while let Some((name, sub)) = leaf.subcommand() {
        path.push(name.to_string());
        leaf = sub;
    }
    let table = super::layers::table_name(&path);
    let program = argv.first().cloned().unwrap_or_else(|| "mnemo".into());
    let unchanged = |path: Vec<String>| Resolution {
        path,
        settings: Vec::new(),
        argv: argv.to_vec(),
        changed: false,
    };
    let Some(keys) = tree.tables.get(&table).filter(|_| table != GLOBAL) else {
        return Ok(unchanged(path));
    };
    let config: Option<PathBuf> = m.get_one::<PathBuf>("config").cloned();
    let set: Vec<String> = m
        .get_many::<String>("set")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    let file = match &config {
        Some(p) => Some(ConfigFile::load(p)?),
        None => None,
    };
    let layers = Layers::read(&tree.schema, &table, file.as_ref(), env, &set)?;
    let mut settings = Vec::new();
    for (t, keys, matches) in [
        (table.as_str(), keys, leaf),
        (GLOBAL, &tree.tables[GLOBAL], &m),
    ] {
        for k in keys {
            let (value, source) =
                effective(layers.get(t, &k.key), cli_value(matches, k), from_layer);
            let value = if source == Source::Default {
                default_value(matches, k)
            } else {
                value
            };
            settings.push(Setting {
                table: t.to_string(),
                arg: k.clone(),
                value,
                source,
            });
        }
    }
    let layered = |s: &&Setting| matches!(s.source, Source::File(_) | Source::Env(_) | Source::Set);
    for s in settings.iter().filter(layered) {
        if let Some(Final::Words(words)) = &s.value {
            for w in words {
                check_value(&s.arg, w).map_err(|e| mnemo::MnemoError::Config {
                    origin: origin(s, &set),
                    reason: e,
                })?;
            }
        }
    }
    let changed = settings.iter().any(|s| layered(&s));
    if !changed {
        return Ok(Resolution {
            settings,
            ..unchanged(path)
        });
    }
    let mut out = vec![program];
    out.extend(path.iter().map(OsString::from));
    let mut positional = Vec::new();
    for s in &settings {
        if s.source == Source::Default {
            continue;
        }
        match (&s.value, &s.arg.long) {
            (Some(Final::Switch(b)), Some(long)) if *b == s.arg.when => {
                out.push(format!("--{long}").into());
            }
            (Some(Final::Words(words)), Some(long)) => {
                for w in words {
                    let mut f = OsString::from(format!("--{long}="));
                    f.push(w);
                    out.push(f);
                }
            }
            (Some(Final::Words(words)), None) => {
                positional.push((s.arg.arg.get_index().unwrap_or(usize::MAX), words.clone()))
            }
            _ => {}
        }
    }
    if !positional.is_empty() {
        positional.sort_by_key(|(i, _)| *i);
        out.push("--".into());
        for (_, words) in positional {
            out.extend(words);
        }
    }
    Ok(Resolution {
        path,
        settings,
        argv: out,
        changed: true,
    })
}

fn print_clap_error(e: &clap::Error) -> i32 {
    match e.print() {
        // Help or version on a stdout that cannot take it (`>/dev/full`) is an error, not
        // exit 0; a reader that went away (`| head -1`) ends it quietly.
        Err(io) if !e.use_stderr() && io.kind() != std::io::ErrorKind::BrokenPipe => {
            super::warn(format!("mnemo: error: writing to stdout: {io}"));
            2
        }
        _ if e.use_stderr() => 2,
        _ => 0,
    }
}

fn is_config_show(m: &clap::ArgMatches) -> bool {
    matches!(m.subcommand(), Some(("config", s)) if s.subcommand_name() == Some("show"))
}

/// `mnemo [...] merge ... --config F.yml|F.yaml ...` (the flag is global: anywhere).
fn is_merge_yaml(argv: &[OsString]) -> bool {
    let yaml = |s: &str| {
        let l = s.to_ascii_lowercase();
        l.ends_with(".yml") || l.ends_with(".yaml")
    };
    let args: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.iter().any(|a| a == "merge")
        && args.iter().enumerate().any(|(i, a)| {
            a.strip_prefix("--config=").is_some_and(yaml)
                || (a == "--config" && args.get(i + 1).is_some_and(|v| yaml(v)))
        })
}

/// argv → the final matches with the layers applied, and the command line they came from
/// (the process's own, or the effective one when a layer contributed settings: what
/// provenance records). On an error, it has been printed and the exit status is returned.
pub fn parse(argv: &[OsString]) -> Result<(clap::ArgMatches, Vec<OsString>), i32> {
    let own = |m: clap::ArgMatches| (m, argv.to_vec());
    let first = crate::command().try_get_matches_from(argv);
    let first = match first {
        Ok(m) if is_config_show(&m) => return Ok(own(m)),
        Ok(m) => Ok(m),
        // The file or the environment may still supply it.
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => Err(e),
        Err(e) => return Err(print_clap_error(&e)),
    };
    let env = match mnemo_env() {
        Ok(env) => env,
        Err(e) => {
            super::warn(format!("mnemo: error: {e:#}"));
            return Err(2);
        }
    };
    // `merge --config merge.yml` is mergekit's configuration, read by `merge` itself (also
    // when clap found an argument missing: the YAML is no settings layer to supply it).
    if is_merge_yaml(argv) {
        return first.map(own).map_err(|e| print_clap_error(&e));
    }
    // No layer at all (the common case): clap's matches as they are.
    if let Ok(m) = &first {
        if env.is_empty()
            && m.get_one::<PathBuf>("config").is_none()
            && m.get_many::<String>("set").is_none()
        {
            return first.map(own).map_err(|e| print_clap_error(&e));
        }
    }
    let r = match resolve(argv, &env) {
        Ok(r) => r,
        Err(e) => {
            super::warn(format!("mnemo: error: {e:#}"));
            return Err(2);
        }
    };
    if !r.changed {
        return first.map(own).map_err(|e| print_clap_error(&e));
    }
    let matches = crate::command()
        .try_get_matches_from(&r.argv)
        .map_err(|e| {
            let code = print_clap_error(&e);
            let from: Vec<String> = r
                .settings
                .iter()
                .filter(|s| matches!(s.source, Source::File(_) | Source::Env(_) | Source::Set))
                .map(|s| format!("{} ({})", s.arg.key, s.source))
                .collect();
            super::warn(format!(
                "note: the command line above includes settings from layers: {}; \
                 `mnemo config show` lists them",
                from.join(", ")
            ));
            code
        })?;
    Ok((matches, r.argv))
}

fn json_word(k: &KeyArg, w: &OsStr) -> serde_json::Value {
    let s = w.to_string_lossy();
    if k.numeric {
        if let Ok(n) = s.parse::<i64>() {
            return json!(n);
        }
        if let Ok(x) = s.parse::<f64>() {
            if let Some(n) = serde_json::Number::from_f64(x) {
                return serde_json::Value::Number(n);
            }
        }
    }
    json!(s)
}

fn json_value(s: &Setting) -> serde_json::Value {
    match &s.value {
        None if s.arg.kind == Kind::Many => json!([]),
        None => serde_json::Value::Null,
        Some(Final::Switch(b)) => json!(b),
        Some(Final::Words(w)) if s.arg.kind == Kind::Many => {
            serde_json::Value::Array(w.iter().map(|x| json_word(&s.arg, x)).collect())
        }
        Some(Final::Words(w)) => w
            .first()
            .map_or(serde_json::Value::Null, |x| json_word(&s.arg, x)),
    }
}

/// `mnemo config keys` (hidden): the command tree's flags, for tests.
fn keys() -> anyhow::Result<Status> {
    let mut root = crate::command();
    root.build();
    let mut out = super::JsonLines::stdout();
    fn walk(
        c: &clap::Command,
        path: &mut Vec<String>,
        out: &mut super::JsonLines,
    ) -> anyhow::Result<()> {
        for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
            path.push(s.get_name().to_string());
            if s.has_subcommands() {
                walk(s, path, out)?;
            } else {
                for a in s.get_arguments().filter(|a| !a.is_global_set()) {
                    if let Some(k) = key_arg(a) {
                        out.emit(&json!({
                            "path": path, "key": k.key, "long": k.long, "numeric": k.numeric,
                            "kind": format!("{:?}", k.kind), "positional": a.is_positional(),
                        }))?;
                    }
                }
            }
            path.pop();
        }
        Ok(())
    }
    walk(&root, &mut Vec::new(), &mut out)?;
    Ok(Status::Success)
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let (table, command) = match args.command {
        ConfigCommand::Show { table, command } => (table, command),
        ConfigCommand::Keys => return keys(),
    };
    let mut argv: Vec<OsString> = vec!["mnemo".into()];
    if let Some(c) = &g.config {
        argv.push("--config".into());
        argv.push(c.into());
    }
    for s in &g.set {
        argv.push("--set".into());
        argv.push(s.into());
    }
    argv.extend(command.iter().cloned());
    let r = resolve(&argv, &mnemo_env()?)?;
    if r.path.is_empty() || r.path == ["config", "show"] {
        anyhow::bail!(
            "'{}' names no subcommand with settings (e.g. train-ewc, data split)",
            command
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let rows: Vec<serde_json::Value> = r
        .settings
        .iter()
        .map(|s| json!({"key": s.arg.key, "value": json_value(s), "source": s.source.to_string()}))
        .collect();
    if table {
        let cells: Vec<[String; 3]> = rows
            .iter()
            .map(|r| {
                let v = match &r["value"] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".into(),
                    other => other.to_string(),
                };
                [
                    r["key"].as_str().unwrap_or("").to_string(),
                    v,
                    r["source"].as_str().unwrap_or("").to_string(),
                ]
            })
            .collect();
        let w0 = cells
            .iter()
            .map(|c| c[0].chars().count())
            .max()
            .unwrap_or(3)
            .max(3);
        let w1 = cells
            .iter()
            .map(|c| c[1].chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut text = format!("{:w0$}  {:w1$}  source\n", "key", "value");
        for c in &cells {
            text.push_str(&format!("{:w0$}  {:w1$}  {}\n", c[0], c[1], c[2]));
        }
        super::print_text(&text)?;
    } else {
        let mut out = super::JsonLines::stdout();
        for row in &rows {
            out.emit(row).context("writing the settings")?;
        }
    }
    Ok(Status::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every configurable argument has a flag name or is positional, and no table has a
    /// key twice; every subcommand has a table.
    #[test]
    fn every_subcommand_has_a_table_of_unique_keys() {
        let t = tree();
        // No argument is left out of the settings but help and version.
        fn all(c: &clap::Command) {
            for a in c.get_arguments() {
                assert!(
                    key_arg(a).is_some()
                        || a.is_hide_set()
                        || matches!(
                            a.get_action(),
                            ArgAction::Help
                                | ArgAction::HelpShort
                                | ArgAction::HelpLong
                                | ArgAction::Version
                        ),
                    "{}: --{} has an action that is not a setting",
                    c.get_name(),
                    a.get_id()
                );
            }
            c.get_subcommands().for_each(all);
        }
        let mut root = crate::command();
        root.build();
        all(&root);
        for (table, keys) in &t.tables {
            let mut seen = std::collections::BTreeSet::new();
            for k in keys {
                assert!(seen.insert(k.key.clone()), "[{table}] {} twice", k.key);
                assert!(
                    k.long.is_some() || k.arg.is_positional(),
                    "[{table}] {}: neither a long flag nor positional",
                    k.key
                );
            }
        }
        for name in [
            "train-ewc",
            "data-split",
            "data-import-idx",
            "lora-merge",
            "merge",
            "drift",
            "global",
            "log-mlflow",
        ] {
            assert!(t.tables.contains_key(name), "no [{name}]");
        }
        assert_eq!(t.schema.tables["train-ewc"]["penalty"], Kind::Many);
        assert_eq!(t.schema.tables["train-ewc"]["nesterov"], Kind::Switch);
        assert_eq!(t.schema.tables["train-ewc"]["lambda"], Kind::One);
        assert_eq!(t.schema.tables["eval"]["data"], Kind::Many);
        assert_eq!(t.schema.tables["train-ewc"]["model"], Kind::One);
        assert!(t.tables["train-ewc"]
            .iter()
            .any(|k| k.key == "lambda" && k.numeric));
        assert!(!t.schema.tables[GLOBAL].contains_key("config"));
    }

    #[test]
    fn values_are_checked_by_the_flags_parser() {
        let t = tree();
        let k = |table: &str, key: &str| {
            t.tables[table]
                .iter()
                .find(|k| k.key == key)
                .unwrap()
                .clone()
        };
        assert!(check_value(&k("train-ewc", "lambda"), OsStr::new("1e3")).is_ok());
        let e = check_value(&k("train-ewc", "lambda"), OsStr::new("abc")).unwrap_err();
        assert!(
            e.contains("invalid value 'abc'") && e.contains("--lambda"),
            "{e}"
        );
        let e = check_value(&k("train-ewc", "optimizer"), OsStr::new("rmsprop")).unwrap_err();
        assert!(e.contains("possible values"), "{e}");
        assert!(check_value(&k("train-ewc", "batch-size"), OsStr::new("0")).is_err());
        assert!(check_value(&k("data-rotate", "degrees"), OsStr::new("-45")).is_ok());
    }

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn rebuilt_command_line() {
        let env = vec![("MNEMO_TRAIN_EWC_EPOCHS".to_string(), "4".to_string())];
        let r = resolve(
            &argv(&[
                "mnemo",
                "train-ewc",
                "m.st",
                "--lambda",
                "3",
                "--set",
                "nesterov=true",
                "-o",
                "o.st",
            ]),
            &env,
        )
        .unwrap();
        assert!(r.changed);
        let words: Vec<String> = r.argv.iter().map(|w| w.to_string_lossy().into()).collect();
        assert_eq!(
            words,
            [
                "mnemo",
                "train-ewc",
                "--output=o.st",
                "--lambda=3",
                "--nesterov",
                "--epochs=4",
                "--",
                "m.st"
            ]
        );
        // Nothing from a layer: the command line is kept as typed.
        let a = argv(&["mnemo", "eval", "m.st", "--data", "d.st"]);
        let r = resolve(&a, &[]).unwrap();
        assert!(!r.changed);
        assert_eq!(r.argv, a);
        // A value from the environment is checked by the flag's parser.
        let env = vec![("MNEMO_TRAIN_EWC_EPOCHS".to_string(), "many".to_string())];
        let e = resolve(&argv(&["mnemo", "train-ewc", "m.st"]), &env)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("MNEMO_TRAIN_EWC_EPOCHS") && e.contains("'many'"),
            "{e}"
        );
    }
}
