//! Parsing and validation of a safetensors header. Nothing in a header is
//! trusted: sizes, offsets, dtypes and names are all checked before any
//! tensor byte is read.

use super::Dtype;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// The same limit the official implementations apply.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor's entry, with offsets relative to the start of the data section.
/// The most dimensions a tensor may have (torch allows 64; a header claiming 200,000 would
/// otherwise reach every formatter and loop).
pub const MAX_RANK: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub begin: usize,
    pub end: usize,
}

impl TensorEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn nbytes(&self) -> usize {
        self.end - self.begin
    }
}

/// A validated header.
#[derive(Clone, Debug, Default)]
pub struct Header {
    /// Tensors in file (offset) order.
    pub tensors: Vec<TensorEntry>,
    pub metadata: BTreeMap<String, String>,
    /// Length of the JSON header in bytes (the data starts at 8 + this).
    pub header_len: usize,
}

/// JSON object entries in document order, keeping duplicates so we can refuse them
/// (serde_json's maps silently keep the last one).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, serde_json::Value>()? {
                    v.push((k, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Parses and validates the header of a file of `file_len` bytes whose first bytes are `prefix`
/// (at least the 8-byte length and the header itself). Returns a reason string on failure.
pub fn parse(bytes: &[u8], file_len: u64) -> Result<Header, String> {
    if file_len < 8 || bytes.len() < 8 {
        return Err(format!(
            "file is {file_len} bytes, too short for the 8-byte header length"
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if n > MAX_HEADER_LEN {
        return Err(format!(
            "header length {n} exceeds the {MAX_HEADER_LEN}-byte limit"
        ));
    }
    if 8 + n > file_len {
        return Err(format!(
            "header length {n} runs past the end of the file ({file_len} bytes)"
        ));
    }
    let n = n as usize;
    let raw = &bytes[8..8 + n];
    let text = std::str::from_utf8(raw).map_err(|e| {
        format!(
            "header is not valid UTF-8 (byte {} of the header)",
            e.valid_up_to()
        )
    })?;
    if !text.starts_with('{') {
        return Err("header does not start with '{'".into());
    }
    let entries: Entries =
        serde_json::from_str(text).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let data_len = (file_len - 8 - n as u64) as usize;

    let mut seen = HashSet::new();
    let mut header = Header {
        header_len: n,
        ..Default::default()
    };
    for (name, value) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(format!("duplicate entry '{name}' in the header"));
        }
        if name == "__metadata__" {
            let obj = value
                .as_object()
                .ok_or("__metadata__ is not a JSON object")?;
            for (k, v) in obj {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("__metadata__ value for '{k}' is not a string"))?;
                header.metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let e: RawEntry = serde_json::from_value(value)
            .map_err(|err| format!("tensor '{name}': malformed entry: {err}"))?;
        let dtype = Dtype::parse(&e.dtype)
            .ok_or_else(|| format!("tensor '{name}': unsupported dtype '{}'", e.dtype))?;
        if e.shape.len() > MAX_RANK {
            return Err(format!(
                "tensor '{name}': rank {} exceeds the limit of {MAX_RANK} dimensions",
                e.shape.len()
            ));
        }
        let numel = e
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size() as u64))
            .ok_or_else(|| format!("tensor '{name}': shape {:?} overflows", e.shape))?;
        let (begin, end) = e.data_offsets;
        if begin > end {
            return Err(format!(
                "tensor '{name}': data_offsets [{begin}, {end}] are reversed"
            ));
        }
        if end > data_len as u64 {
            return Err(format!(
                "tensor '{name}': data_offsets [{begin}, {end}] are out of range (the data section has {data_len} bytes)"
            ));
        }
        if end - begin != numel {
            return Err(format!(
                "tensor '{name}': data_offsets span {} bytes but {dtype} {:?} needs {numel}",
                end - begin,
                e.shape
            ));
        }
        header.tensors.push(TensorEntry {
            name,
            dtype,
            shape: e.shape.iter().map(|&d| d as usize).collect(),
            begin: begin as usize,
            end: end as usize,
        });
    }

    // The data section must be exactly covered: no overlaps, gaps or trailing bytes.
    header.tensors.sort_by_key(|t| (t.begin, t.end));
    let mut pos = 0usize;
    let mut prev: Option<&str> = None;
    for t in &header.tensors {
        if t.begin < pos {
            return Err(format!(
                "tensor '{}' overlaps tensor '{}' (offset {} < {pos})",
                t.name,
                prev.unwrap_or("?"),
                t.begin
            ));
        }
        if t.begin > pos {
            return Err(format!(
                "{} unused bytes before tensor '{}' (offsets must be contiguous)",
                t.begin - pos,
                t.name
            ));
        }
        pos = t.end;
        prev = Some(&t.name);
    }
    if pos != data_len {
        return Err(format!(
            "{} trailing bytes after the last tensor",
            data_len - pos
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend(json.as_bytes());
        v.extend(vec![0u8; data]);
        v
    }

    fn err(json: &str, data: usize) -> String {
        let f = file(json, data);
        parse(&f, f.len() as u64).unwrap_err()
    }

    #[test]
    fn valid_header() {
        let f = file(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
            16,
        );
        let h = parse(&f, f.len() as u64).unwrap();
        assert_eq!(h.tensors[0].name, "a");
        assert_eq!(h.metadata["format"], "pt");
    }

    #[test]
    fn hostile_headers_are_refused() {
        assert!(err(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            4
        )
        .contains("needs 8"));
        assert!(err(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8).contains("duplicate"));
        assert!(err(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#, 8).contains("overlaps"));
        assert!(err(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            2
        )
        .contains("out of range"));
        assert!(err(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            6
        )
        .contains("trailing"));
        assert!(err(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#,
            4
        )
        .contains("overflows"));
        assert!(err(
            r#"{"a":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}}"#,
            4
        )
        .contains("unsupported dtype"));
        assert!(err(r#"[1,2]"#, 0).contains("start with"));
        let mut big = (MAX_HEADER_LEN + 1).to_le_bytes().to_vec();
        big.extend(b"{}");
        assert!(parse(&big, big.len() as u64).unwrap_err().contains("limit"));
        let mut past = 1000u64.to_le_bytes().to_vec();
        past.extend(b"{}");
        assert!(parse(&past, past.len() as u64)
            .unwrap_err()
            .contains("past the end"));
        let mut bad = 3u64.to_le_bytes().to_vec();
        bad.extend([b'{', 0xff, b'}']);
        assert!(parse(&bad, bad.len() as u64).unwrap_err().contains("UTF-8"));
    }
}
