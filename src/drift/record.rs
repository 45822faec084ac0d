//! Reading one number out of each JSON Lines record (`mnemo drift`'s field extraction):
//! a dotted path (`metrics.val_loss`, array indices as numbers) into a record, or the
//! record itself when it is a bare number. Two readers that must agree: the full parse
//! ([`record_value`], when the record is written back annotated) and a fast one over the
//! raw bytes that builds nothing ([`line_value`], for `--events-only` and `-q`).

use serde_json::Value;

/// The value at a dotted path of a JSON text without building the record: every other
/// value is skipped by the parser (serde's `IgnoredAny`). For --events-only and -q, where
/// the record itself is not written back.
mod fast {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// What sits at the path.
    #[derive(Debug, PartialEq)]
    pub enum Found {
        Missing,
        Number(f64),
        Bool(bool),
        Other,
    }

    pub struct Path<'a>(pub &'a [&'a str]);

    impl<'de> DeserializeSeed<'de> for Path<'_> {
        type Value = Found;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Path<'_> {
        type Value = Found;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Found, E> {
            Ok(if self.0.is_empty() {
                Found::Number(v)
            } else {
                Found::Missing
            })
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Found, E> {
            self.visit_f64(v as f64)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Found, E> {
            self.visit_f64(v as f64)
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Found, E> {
            Ok(if self.0.is_empty() {
                Found::Bool(v)
            } else {
                Found::Missing
            })
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Found, E> {
            Ok(Found::Missing)
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Found, E> {
            Ok(if self.0.is_empty() {
                Found::Other
            } else {
                Found::Missing
            })
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Found, A::Error> {
            let mut found = if self.0.is_empty() {
                Found::Other
            } else {
                Found::Missing
            };
            while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                if !self.0.is_empty() && k == self.0[0] {
                    found = m.next_value_seed(Path(&self.0[1..]))?;
                } else {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Found, A::Error> {
            let want = self.0.first().and_then(|k| k.parse::<usize>().ok());
            let mut found = if self.0.is_empty() {
                Found::Other
            } else {
                Found::Missing
            };
            let mut i = 0;
            loop {
                if Some(i) == want {
                    match s.next_element_seed(Path(&self.0[1..]))? {
                        Some(f) => found = f,
                        None => break,
                    }
                } else if s.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                i += 1;
            }
            Ok(found)
        }
    }

    /// Parses `line` and returns what is at `path` (a bare number line is its own value).
    pub fn extract(line: &[u8], path: &[&str]) -> Result<Found, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(line);
        let top = DeserializeSeed::deserialize(Path(path), &mut de)?;
        de.end()?;
        Ok(match top {
            Found::Missing => {
                // A bare number line: the value itself.
                let mut de = serde_json::Deserializer::from_slice(line);
                match DeserializeSeed::deserialize(Path(&[]), &mut de)? {
                    Found::Number(x) => Found::Number(x),
                    _ => Found::Missing,
                }
            }
            f => f,
        })
    }
}

/// The value at `path` (the `field` split at '.') of one JSON Lines record given as raw
/// bytes, without building the record (see `fast`): a finite number (0/1 or a boolean for
/// a `binary` detector), or the reason there is none. Must agree with [`record_value`]
/// (checked by a unit test and the `jsonl_field` fuzz target).
pub fn line_value(line: &[u8], path: &[&str], field: &str, binary: bool) -> Result<f64, String> {
    let mut found = fast::extract(line, path);
    if found.is_err() && std::str::from_utf8(line).is_err() {
        // Invalid UTF-8 is replaced (U+FFFD), as the full parse does, so that both readers
        // agree (found by fuzzing: a stray byte in another field failed only this one).
        found = fast::extract(String::from_utf8_lossy(line).as_bytes(), path);
    }
    let x = match found {
        Err(e) => return Err(format!("not JSON ({e})")),
        Ok(fast::Found::Number(x)) => x,
        Ok(fast::Found::Bool(b)) if binary => f64::from(u8::from(b)),
        Ok(fast::Found::Missing) => return Err(format!("no number at field '{field}'")),
        Ok(_) => return Err(format!("field '{field}' is not a number")),
    };
    check_value(x, field, binary).map_err(|e| e.to_string())
}

/// `x` when it is finite (and 0 or 1 for a `binary` detector), else why not.
pub fn check_value(x: f64, path: &str, binary: bool) -> Result<f64, String> {
    if !x.is_finite() {
        return Err(format!("field '{path}' is {x}"));
    }
    if binary && x != 0.0 && x != 1.0 {
        return Err(format!(
            "field '{path}' is {x}: this detector takes 0/1 (1 = an error)"
        ));
    }
    Ok(x)
}

/// The value at a dotted path of a parsed record: `Some(None)` when absent or null, an
/// error when not a finite number (for a `binary` detector: not 0/1 or a boolean).
pub fn field_value(record: &Value, path: &str, binary: bool) -> Result<Option<f64>, String> {
    if let Some(x) = record.as_f64() {
        return check_value(x, path, binary).map(Some);
    }
    let mut v = record;
    for key in path.split('.') {
        let next = match v {
            Value::Object(o) => o.get(key),
            Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return Ok(None),
        }
    }
    let x = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::Bool(b) if binary => f64::from(u8::from(*b)),
        other => return Err(format!("field '{path}' is {other}, not a number")),
    };
    check_value(x, path, binary).map(Some)
}

/// The full path: `line` (one record, trimmed) parsed as a JSON value (invalid UTF-8
/// replaced, as the record is written back as text) and its value at `field`. Returns the
/// record (the line as a JSON string when it is not JSON) and the value or the reason there
/// is none.
pub fn record_value(line: &[u8], field: &str, binary: bool) -> (Value, Result<f64, String>) {
    let line = String::from_utf8_lossy(line).into_owned();
    match serde_json::from_str::<Value>(&line) {
        Ok(r) => {
            let x = match field_value(&r, field, binary) {
                Ok(Some(x)) => Ok(x),
                Ok(None) => Err(format!("no number at field '{field}'")),
                Err(e) => Err(e),
            };
            (r, x)
        }
        Err(e) => (Value::String(line), Err(format!("not JSON ({e})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_extractor_agrees_with_the_full_parse() {
        let lines = [
            r#"{"a":{"b":[1.5,2]},"e":true,"s":"x","n":null,"loss":0.25}"#,
            r#"{"loss":3,"x":[{"loss":9}]}"#,
            r#"{"x":{"loss":1}}"#,
            r#"0.5"#,
            r#"{"loss":"high"}"#,
            r#"{"loss":1} trailing"#,
            r#"{"loss":1e400}"#,
        ];
        for line in lines {
            for field in ["loss", "a.b.0", "a.b.1", "e", "x.0.loss", "n"] {
                for binary in [false, true] {
                    let keys: Vec<&str> = field.split('.').collect();
                    let fast = line_value(line.as_bytes(), &keys, field, binary);
                    let full = serde_json::from_str::<Value>(line)
                        .map_err(|e| e.to_string())
                        .and_then(|r| field_value(&r, field, binary))
                        .and_then(|x| x.ok_or_else(|| "missing".to_string()));
                    assert_eq!(fast.is_ok(), full.is_ok(), "{line} {field} {binary}");
                    if let (Ok(a), Ok(b)) = (fast, full) {
                        assert_eq!(a, b, "{line} {field}");
                    }
                }
            }
        }
    }

    /// Found by fuzzing (fuzz/regressions/jsonl_field): a byte that is not UTF-8 in another
    /// field failed the fast reader (--events-only, -q) but not the full one.
    #[test]
    fn invalid_utf8_elsewhere_in_the_record_is_read_alike() {
        let line = b"{\"loss\":0.25,\"el\xefspoch\":1}";
        assert_eq!(line_value(line, &["loss"], "loss", false), Ok(0.25));
        assert_eq!(record_value(line, "loss", false).1, Ok(0.25));
        let bad = b"{\"loss\":\"\xef\"}";
        assert!(line_value(bad, &["loss"], "loss", false).is_err());
        assert!(record_value(bad, "loss", false).1.is_err());
    }

    #[test]
    fn dotted_paths_and_binary_values() {
        let r: Value =
            serde_json::from_str(r#"{"a":{"b":[1.5,2]},"e":true,"s":"x","n":null}"#).unwrap();
        assert_eq!(field_value(&r, "a.b.0", false), Ok(Some(1.5)));
        assert_eq!(field_value(&r, "a.c", false), Ok(None));
        assert_eq!(field_value(&r, "n", false), Ok(None));
        assert!(field_value(&r, "s", false).is_err());
        assert_eq!(field_value(&r, "e", true), Ok(Some(1.0)));
        assert!(field_value(&r, "a.b.1", true).is_err(), "2 is not 0/1");
        assert_eq!(
            field_value(&serde_json::json!(0.25), "loss", false),
            Ok(Some(0.25))
        );
    }
}
