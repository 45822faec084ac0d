//! Provenance recorded in every file mnemo writes: version, command line,
//! content hashes of the inputs and the seed. No timestamps or absolute
//! paths, so the same inputs and seed give the same bytes.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub struct Provenance {
    /// The command line, as typed (argv[0] shown as `mnemo`).
    pub command: String,
    /// (path as given, content hash) of each input.
    pub inputs: Vec<(String, String)>,
    pub seed: Option<u64>,
}

impl Provenance {
    pub fn from_args(args: &[String]) -> Self {
        let mut words = vec!["mnemo".to_string()];
        words.extend(args.iter().skip(1).map(|a| shell_quote(a)));
        Provenance {
            command: words.join(" "),
            ..Default::default()
        }
    }

    pub fn input(&mut self, path: impl Into<String>, hash: String) -> &mut Self {
        self.inputs.push((path.into(), hash));
        self
    }

    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("format".into(), "pt".into());
        m.insert("mnemo.version".into(), env!("CARGO_PKG_VERSION").into());
        m.insert("mnemo.command".into(), self.command.clone());
        if !self.inputs.is_empty() {
            let inputs: serde_json::Map<String, serde_json::Value> = self
                .inputs
                .iter()
                .map(|(p, h)| (p.clone(), serde_json::Value::String(h.clone())))
                .collect();
            m.insert(
                "mnemo.inputs".into(),
                serde_json::Value::Object(inputs).to_string(),
            );
        }
        if let Some(s) = self.seed {
            m.insert("mnemo.seed".into(), s.to_string());
        }
        m
    }
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_quoted() {
        let p = Provenance::from_args(&[
            "/usr/bin/mnemo".into(),
            "init".into(),
            "--arch".into(),
            "[{\"type\": \"relu\"}]".into(),
        ]);
        assert_eq!(p.command, "mnemo init --arch '[{\"type\": \"relu\"}]'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
