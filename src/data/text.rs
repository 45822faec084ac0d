//! Token datasets for causal language models: documents read from text files or JSON Lines,
//! encoded by a Hugging Face `tokenizer.json` (the `tokenizers` crate, the library Python's
//! `tokenizers` wraps), then packed as transformers' `run_clm.py` `group_texts` packs them, or
//! one padded row per document.
//!
//! The dataset (`mnemo data import text`):
//! - `input` I64 `[N, T]`: token ids, the pad id at padded positions;
//! - `target` I64 `[N, T]`: Hugging Face's labels, not shifted (the model predicts position t
//!   from positions < t): the input id where the position counts, [`IGNORE`] (-100) at padding;
//! - `attention_mask` U8 `[N, T]`: 1 for real tokens, 0 for padding.
//!
//! Every step is a function of its inputs alone, so the same files, tokenizer and settings
//! give the same bytes (encoding runs in parallel, but each document's ids do not depend on
//! it).

use crate::checkpoint::Dtype;
use crate::checkpoint::OwnedTensor;
use crate::error::{MnemoError, Result};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// The label of positions that do not count (padding): torch's `ignore_index` default and
/// Hugging Face's convention.
pub const IGNORE: i64 = -100;

/// The longest row accepted (`--seq-len`): 2^20 tokens, far beyond any model's context.
pub use crate::validate::MAX_SEQ_LEN;

/// The largest text input read (a file, or stdin): 4 GiB. Checked from the file's size
/// before it is read (and while reading a stream).
pub const MAX_TEXT_BYTES: u64 = 4 << 30;

/// The largest `tokenizer.json` read: 1 GiB (the largest published ones are tens of MB).
pub const MAX_TOKENIZER_BYTES: u64 = 1 << 30;

/// Bytes of memory budgeted per byte of one document while it is encoded (the crate's
/// `Encoding` keeps a string, offsets and masks per token, about 60-100 bytes per token):
/// a document that could not be encoded within the machine's memory is refused first.
const ENCODE_BYTES_PER_BYTE: u64 = 100;

/// Documents encoded per call of the tokenizer (in parallel within a call), so only one
/// batch of `Encoding`s is alive at a time.
const ENCODE_BATCH: usize = 256;

/// EOS tokens looked for, in this order, when `--eos` is not given: Llama 2 / Mistral / T5,
/// GPT-2 / Qwen, Llama 3.
pub const DEFAULT_EOS: &[&str] = &["</s>", "<|endoftext|>", "<|end_of_text|>"];

/// Pad tokens looked for when neither `--pad` nor the tokenizer's padding names one.
pub const DEFAULT_PAD: &[&str] = &["<pad>", "[PAD]"];

/// How a text input is cut into documents (datasets' `load_dataset("text", sample_by=...)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Documents {
    /// The whole file is one document.
    Document,
    /// Each line is a document (the line break not included).
    Line,
    /// The pieces between blank lines ("\n\n") are the documents.
    Paragraph,
    /// JSON Lines: each non-blank line an object, the document the string under this field.
    Jsonl(String),
}

/// An input's bytes, and the name errors give it (a path, or `-` for stdin).
pub struct TextInput {
    pub label: PathBuf,
    pub bytes: Vec<u8>,
}

impl TextInput {
    /// A regular file, read whole after its size is checked against [`MAX_TEXT_BYTES`].
    pub fn read(path: &Path) -> Result<Self> {
        Ok(TextInput {
            label: path.to_path_buf(),
            bytes: read_bounded(path, MAX_TEXT_BYTES, "a text input")?,
        })
    }

    /// A stream (stdin), read to its end, refused as soon as it passes [`MAX_TEXT_BYTES`].
    pub fn from_reader(label: &Path, r: impl std::io::Read) -> Result<Self> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(r, MAX_TEXT_BYTES + 1), &mut bytes)
            .map_err(|e| MnemoError::io(label, e))?;
        if bytes.len() as u64 > MAX_TEXT_BYTES {
            return Err(too_large(label, "the stream", MAX_TEXT_BYTES));
        }
        Ok(TextInput {
            label: label.to_path_buf(),
            bytes,
        })
    }

    /// `blake3:HEX` of the bytes read (what `checkpoint::file_hash` gives the same file).
    pub fn hash(&self) -> String {
        format!("blake3:{}", blake3::hash(&self.bytes).to_hex())
    }
}

fn too_large(path: &Path, what: &str, max: u64) -> MnemoError {
    MnemoError::TooLarge {
        what: path.display().to_string(),
        reason: format!("{what} exceeds the {max}-byte limit"),
    }
}

/// A regular file's bytes, its size checked against `max` before anything is allocated.
fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let f = crate::fsutil::open_file(path)?;
    let len = f.metadata().map_err(|e| MnemoError::io(path, e))?.len();
    if len > max {
        return Err(too_large(path, &format!("{what} of {len} bytes"), max));
    }
    let mut bytes = Vec::with_capacity(crate::validate::alloc_bytes(
        &path.display().to_string(),
        len,
        1,
    )?);
    // A file that grows while it is read is cut at the bound, not read for ever.
    std::io::Read::read_to_end(&mut std::io::Read::take(f, max + 1), &mut bytes)
        .map_err(|e| MnemoError::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(too_large(path, what, max));
    }
    Ok(bytes)
}

/// The input as UTF-8, or an error naming the byte offset (and line) of the first invalid
/// byte.
fn utf8<'a>(label: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
        MnemoError::InvalidText {
            path: label.to_path_buf(),
            reason: format!(
                "not UTF-8 text: invalid byte 0x{:02x} at byte offset {at} (line {line})",
                bytes[at]
            ),
        }
    })
}

/// Python's universal newlines (how `open(path)` reads text, and so datasets' text loader):
/// "\r\n" and a lone "\r" read as "\n".
fn universal_newlines(s: &str) -> Cow<'_, str> {
    if !s.contains('\r') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\r' {
            if it.peek() == Some(&'\n') {
                it.next();
            }
            out.push('\n');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The documents of one input, empty ones left out. Text is read as Python reads a text
/// file (universal newlines); JSON Lines are read as written (a field's string exactly).
pub fn documents(input: &TextInput, how: &Documents) -> Result<Vec<String>> {
    let text = utf8(&input.label, &input.bytes)?;
    let keep = |v: Vec<&str>| -> Vec<String> {
        v.into_iter()
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect()
    };
    match how {
        Documents::Jsonl(field) => jsonl_documents(&input.label, text, field),
        other => {
            let t = universal_newlines(text);
            Ok(match other {
                Documents::Document => keep(vec![&t]),
                Documents::Line => keep(t.split('\n').collect()),
                _ => keep(t.split("\n\n").collect()),
            })
        }
    }
}

fn jsonl_documents(label: &Path, text: &str, field: &str) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim_matches([' ', '\t', '\r', '\n']).is_empty() {
            continue;
        }
        let bad = |reason: String| MnemoError::InvalidLine {
            path: label.to_path_buf(),
            line: i + 1,
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad(format!("not a JSON object: {}", json_kind(&v))))?;
        match obj.get(field) {
            Some(serde_json::Value::String(s)) => {
                if !s.is_empty() {
                    docs.push(s.clone());
                }
            }
            Some(other) => {
                return Err(bad(format!(
                    "field \"{field}\" is {}, not a string",
                    json_kind(other)
                )))
            }
            None => {
                let keys: Vec<&str> = obj.keys().map(String::as_str).take(8).collect();
                return Err(bad(format!(
                    "no field \"{field}\" (the line has: {})",
                    if keys.is_empty() {
                        "no fields".to_string()
                    } else {
                        keys.join(", ")
                    }
                )));
            }
        }
    }
    Ok(docs)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A `tokenizer.json`, loaded, with what the dataset records of it.
pub struct TextTokenizer {
    pub path: PathBuf,
    tokenizer: tokenizers::Tokenizer,
    /// blake3 of the file's bytes (hex).
    pub blake3: String,
    /// The number of ids: the largest id of the vocabulary, added tokens included, plus one
    /// (the rows of a model's embedding).
    pub vocab_size: u64,
    /// The pad id of the file's `padding` section, if it has one.
    pub padding_id: Option<u32>,
}

impl TextTokenizer {
    /// Reads and parses a `tokenizer.json` (any model, normalizer, pre-tokenizer and
    /// post-processor the crate knows). The file's own truncation and padding are turned off
    /// for encoding: documents are cut and padded by the packing, not by the tokenizer.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = read_bounded(path, MAX_TOKENIZER_BYTES, "a tokenizer.json")?;
        let invalid = |reason: String| MnemoError::InvalidTokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            invalid(match std::str::from_utf8(&bytes) {
                Err(_) => "not UTF-8 text (a tokenizer.json is JSON)".to_string(),
                Ok(_) => format!("not a tokenizer.json the tokenizers crate can load: {e}"),
            })
        })?;
        let padding_id = tokenizer.get_padding().map(|p| p.pad_id);
        tokenizer
            .with_truncation(None)
            .map_err(|e| invalid(e.to_string()))?;
        tokenizer.with_padding(None);
        let vocab_size = tokenizer
            .get_vocab(true)
            .values()
            .map(|&id| id as u64 + 1)
            .max()
            .ok_or_else(|| invalid("the vocabulary is empty".to_string()))?;
        Ok(TextTokenizer {
            path: path.to_path_buf(),
            tokenizer,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            vocab_size,
            padding_id,
        })
    }

    /// The id of a token of the vocabulary (added tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The id of `token`, or an error naming the flag that gave it and the tokenizer's
    /// special tokens.
    pub fn require(&self, flag: &str, token: &str) -> Result<u32> {
        self.token_id(token).ok_or_else(|| {
            let mut special: Vec<(u32, String)> = self
                .tokenizer
                .get_added_tokens_decoder()
                .into_iter()
                .filter(|(_, t)| t.special)
                .map(|(id, t)| (id, t.content))
                .collect();
            special.sort();
            let names: Vec<String> = special.into_iter().take(12).map(|(_, c)| c).collect();
            MnemoError::InvalidTokenizer {
                path: self.path.clone(),
                reason: format!(
                    "{flag} '{token}': no such token in the vocabulary (its special tokens: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(" ")
                    }
                ),
            }
        })
    }

    /// The EOS token by its default names ([`DEFAULT_EOS`]): (token, id).
    pub fn default_eos(&self) -> Option<(&'static str, u32)> {
        DEFAULT_EOS
            .iter()
            .find_map(|&t| self.token_id(t).map(|id| (t, id)))
    }

    /// The default pad id: the file's padding pad id, else a [`DEFAULT_PAD`] token, else
    /// `eos`, else 0.
    pub fn default_pad(&self, eos: Option<u32>) -> u32 {
        self.padding_id
            .or_else(|| DEFAULT_PAD.iter().find_map(|t| self.token_id(t)))
            .or(eos)
            .unwrap_or(0)
    }

    /// Each document's ids (`add_special_tokens` as the post-processor says), followed by
    /// `eos` unless they already end with it (a post-processor that appends it).
    /// `label` names the documents' input in errors.
    pub fn encode(
        &self,
        label: &Path,
        docs: &[String],
        add_special_tokens: bool,
        eos: Option<u32>,
    ) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(docs.len());
        for (b, batch) in docs.chunks(ENCODE_BATCH).enumerate() {
            for (i, d) in batch.iter().enumerate() {
                crate::validate::alloc_bytes(
                    &format!(
                        "{}: document {} ({} bytes) while it is encoded",
                        label.display(),
                        b * ENCODE_BATCH + i + 1,
                        d.len()
                    ),
                    d.len() as u64,
                    ENCODE_BYTES_PER_BYTE,
                )?;
            }
            let inputs: Vec<&str> = batch.iter().map(String::as_str).collect();
            let encodings = self
                .tokenizer
                .encode_batch_fast(inputs, add_special_tokens)
                .map_err(|e| MnemoError::InvalidTokenizer {
                    path: self.path.clone(),
                    reason: format!("encoding {}: {e}", label.display()),
                })?;
            for e in encodings {
                let mut ids = e.get_ids().to_vec();
                if let Some(eos) = eos {
                    if ids.last() != Some(&eos) {
                        ids.push(eos);
                    }
                }
                out.push(ids);
            }
        }
        Ok(out)
    }
}

/// How documents become rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// Concatenated and cut into rows of T (`group_texts`); the remainder dropped, or with
    /// `keep_remainder` padded into a last row.
    Pack { keep_remainder: bool },
    /// One row per document, its ids cut to T and right-padded.
    Pad,
}

impl Packing {
    /// `pack` or `pad` (the `mnemo.tokens.packing` value).
    pub fn name(self) -> &'static str {
        match self {
            Packing::Pack { .. } => "pack",
            Packing::Pad => "pad",
        }
    }
}

/// The rows of a token dataset, with the counts its summary reports.
#[derive(Debug, PartialEq)]
pub struct TokenRows {
    pub rows: usize,
    pub seq_len: usize,
    /// `[rows, seq_len]` token ids, `pad` at padded positions.
    pub input: Vec<i64>,
    /// `[rows, seq_len]` labels: the id, or [`IGNORE`] at padded positions.
    pub target: Vec<i64>,
    /// `[rows, seq_len]` 1 for real tokens, 0 for padding.
    pub mask: Vec<u8>,
    /// Tokens of the documents (EOS included).
    pub total: u64,
    /// Tokens in the rows (the mask's ones).
    pub kept: u64,
}

impl TokenRows {
    /// Tokens of the documents left out (the remainder, or what truncation cut).
    pub fn dropped(&self) -> u64 {
        self.total - self.kept
    }

    /// The three tensors, in the writer's form (moves the rows: one copy alive at a time).
    pub fn into_tensors(self) -> Vec<OwnedTensor<'static>> {
        let shape = vec![self.rows, self.seq_len];
        let le = |v: Vec<i64>| -> Vec<u8> {
            let mut b = Vec::with_capacity(v.len() * 8);
            for x in v {
                b.extend_from_slice(&x.to_le_bytes());
            }
            b
        };
        let input = le(self.input);
        let target = le(self.target);
        vec![
            OwnedTensor {
                name: "input".into(),
                dtype: Dtype::I64,
                shape: shape.clone(),
                data: Cow::Owned(input),
            },
            OwnedTensor {
                name: "target".into(),
                dtype: Dtype::I64,
                shape: shape.clone(),
                data: Cow::Owned(target),
            },
            OwnedTensor {
                name: "attention_mask".into(),
                dtype: Dtype::U8,
                shape,
                data: Cow::Owned(self.mask),
            },
        ]
    }
}

/// Builds the rows from each document's ids. Refuses a `seq_len` of 0 or above
/// [`MAX_SEQ_LEN`], and sizes beyond the machine's memory (before allocating); zero rows
/// are not an error here (the caller says what to do about them).
pub fn rows(docs: &[Vec<u32>], seq_len: usize, packing: Packing, pad: u32) -> Result<TokenRows> {
    if seq_len == 0 || seq_len > MAX_SEQ_LEN {
        return Err(MnemoError::TooLarge {
            what: "the row length".into(),
            reason: format!("{seq_len} is not in [1, {MAX_SEQ_LEN}]"),
        });
    }
    let total: u64 = docs.iter().map(|d| d.len() as u64).sum();
    let t = seq_len as u64;
    let n = match packing {
        Packing::Pack {
            keep_remainder: false,
        } => total / t,
        Packing::Pack {
            keep_remainder: true,
        } => total.div_ceil(t),
        Packing::Pad => docs.len() as u64,
    };
    let cells = n.checked_mul(t).ok_or_else(|| MnemoError::TooLarge {
        what: "the token dataset".into(),
        reason: format!("{n} rows × {seq_len} overflows"),
    })?;
    // input and target (8 bytes each), the mask (1), and one tensor's bytes while written.
    crate::validate::alloc_bytes(
        &format!("the token dataset ({n} rows × {seq_len})"),
        cells,
        8 + 8 + 1 + 8,
    )?;
    let cells = cells as usize;
    let mut input = vec![pad as i64; cells];
    let mut target = vec![IGNORE; cells];
    let mut mask = vec![0u8; cells];
    let mut kept = 0u64;
    let mut put = |pos: usize, id: u32| {
        input[pos] = id as i64;
        target[pos] = id as i64;
        mask[pos] = 1;
    };
    match packing {
        Packing::Pack { .. } => {
            // Row-major, so the concatenation's k-th token goes to cell k.
            let mut k = 0usize;
            'docs: for d in docs {
                for &id in d {
                    if k == cells {
                        break 'docs;
                    }
                    put(k, id);
                    k += 1;
                }
            }
            kept = k as u64;
        }
        Packing::Pad => {
            for (r, d) in docs.iter().enumerate() {
                let take = d.len().min(seq_len);
                for (j, &id) in d[..take].iter().enumerate() {
                    put(r * seq_len + j, id);
                }
                kept += take as u64;
            }
        }
    }
    Ok(TokenRows {
        rows: n as usize,
        seq_len,
        input,
        target,
        mask,
        total,
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// run_clm.py's group_texts on one concatenation, written out: rows of T, the rest
    /// dropped.
    fn group_texts(docs: &[Vec<u32>], t: usize) -> Vec<Vec<u32>> {
        let all: Vec<u32> = docs.concat();
        let total = all.len() / t * t;
        (0..total)
            .step_by(t)
            .map(|i| all[i..i + t].to_vec())
            .collect()
    }

    fn row(r: &TokenRows, i: usize) -> (&[i64], &[i64], &[u8]) {
        let s = i * r.seq_len..(i + 1) * r.seq_len;
        (&r.input[s.clone()], &r.target[s.clone()], &r.mask[s])
    }

    #[test]
    fn packing_is_group_texts() {
        let docs = vec![vec![1, 2, 3, 9], vec![4, 5, 9], vec![6, 7, 8, 10, 11, 9]];
        for t in 1..=14 {
            let r = rows(
                &docs,
                t,
                Packing::Pack {
                    keep_remainder: false,
                },
                0,
            )
            .unwrap();
            let want = group_texts(&docs, t);
            assert_eq!(r.rows, want.len(), "T={t}");
            for (i, w) in want.iter().enumerate() {
                let (inp, tgt, m) = row(&r, i);
                let w: Vec<i64> = w.iter().map(|&x| x as i64).collect();
                assert_eq!(inp, &w[..]);
                assert_eq!(tgt, &w[..], "labels are the ids, unshifted");
                assert!(m.iter().all(|&x| x == 1));
            }
            assert_eq!(r.total, 13);
            assert_eq!(r.kept, (13 / t * t) as u64);
            assert_eq!(r.dropped(), (13 % t) as u64);
        }
    }

    #[test]
    fn keep_remainder_pads_the_last_row() {
        let docs = vec![vec![1, 2, 3], vec![4, 5]];
        let r = rows(
            &docs,
            3,
            Packing::Pack {
                keep_remainder: true,
            },
            7,
        )
        .unwrap();
        assert_eq!(r.rows, 2);
        assert_eq!(row(&r, 0), (&[1, 2, 3][..], &[1, 2, 3][..], &[1, 1, 1][..]));
        assert_eq!(
            row(&r, 1),
            (&[4, 5, 7][..], &[4, 5, IGNORE][..], &[1, 1, 0][..])
        );
        assert_eq!(r.dropped(), 0);
        // An exact multiple gets no extra row.
        let r = rows(
            &[vec![1, 2, 3, 4]],
            2,
            Packing::Pack {
                keep_remainder: true,
            },
            0,
        )
        .unwrap();
        assert_eq!(r.rows, 2);
        assert!(r.mask.iter().all(|&m| m == 1));
    }

    #[test]
    fn pad_mode_truncates_and_right_pads() {
        let docs = vec![vec![1, 2, 3, 4, 5], vec![6], vec![]];
        let r = rows(&docs, 3, Packing::Pad, 0).unwrap();
        assert_eq!(r.rows, 3);
        assert_eq!(row(&r, 0), (&[1, 2, 3][..], &[1, 2, 3][..], &[1, 1, 1][..]));
        assert_eq!(
            row(&r, 1),
            (&[6, 0, 0][..], &[6, IGNORE, IGNORE][..], &[1, 0, 0][..])
        );
        assert_eq!(row(&r, 2).2, &[0, 0, 0][..]);
        assert_eq!((r.total, r.kept, r.dropped()), (6, 4, 2));
    }

    #[test]
    fn too_few_tokens_give_zero_rows_and_bad_lengths_are_refused() {
        let docs = vec![vec![1, 2]];
        let r = rows(
            &docs,
            3,
            Packing::Pack {
                keep_remainder: false,
            },
            0,
        )
        .unwrap();
        assert_eq!((r.rows, r.dropped()), (0, 2));
        assert!(rows(&docs, 0, Packing::Pad, 0).is_err());
        assert!(rows(&docs, MAX_SEQ_LEN + 1, Packing::Pad, 0).is_err());
        // Rows × T beyond memory is refused before allocating.
        let many: Vec<Vec<u32>> = vec![vec![]; 1 << 20];
        let e = rows(&many, MAX_SEQ_LEN, Packing::Pad, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn tensors_have_the_format() {
        let r = rows(
            &[vec![1, 2, 3]],
            2,
            Packing::Pack {
                keep_remainder: true,
            },
            5,
        )
        .unwrap();
        let t = r.into_tensors();
        let names: Vec<(&str, Dtype, &[usize])> = t
            .iter()
            .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("input", Dtype::I64, &[2, 2][..]),
                ("target", Dtype::I64, &[2, 2][..]),
                ("attention_mask", Dtype::U8, &[2, 2][..])
            ]
        );
        let tgt: Vec<i64> = t[1]
            .data
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(tgt, vec![1, 2, 3, IGNORE]);
        assert_eq!(&t[2].data[..], &[1, 1, 1, 0]);
    }

    fn input(bytes: &[u8]) -> TextInput {
        TextInput {
            label: PathBuf::from("in.txt"),
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn documents_are_read_as_datasets_reads_text() {
        let i = input(b"a\r\nb\rc\n\n\nd\n\n");
        assert_eq!(
            documents(&i, &Documents::Document).unwrap(),
            vec!["a\nb\nc\n\n\nd\n\n"]
        );
        assert_eq!(
            documents(&i, &Documents::Line).unwrap(),
            vec!["a", "b", "c", "d"]
        );
        // datasets splits on "\n\n" and drops the empty pieces.
        assert_eq!(
            documents(&i, &Documents::Paragraph).unwrap(),
            vec!["a\nb\nc", "\nd"]
        );
        assert!(documents(&input(b""), &Documents::Document)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bad_utf8_names_the_offset_and_line() {
        let e = documents(&input(b"ok\nok\n\xff"), &Documents::Line)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("in.txt") && e.contains("byte offset 6") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_lines_name_their_problem() {
        let j = |s: &str| documents(&input(s.as_bytes()), &Documents::Jsonl("text".into()));
        assert_eq!(
            j("{\"text\": \"a\\u00e9\"}\r\n\n  \n{\"text\": \"\"}\n{\"x\": 1, \"text\": \"b\"}")
                .unwrap(),
            vec!["aé", "b"]
        );
        for (bad, want) in [
            (
                "{\"text\": \"a\"}\n{\"text\": 3}",
                "in.txt:2: field \"text\" is a number",
            ),
            (
                "{\"text\": \"a\"}\n\n{\"body\": \"b\"}",
                "in.txt:3: no field \"text\" (the line has: body",
            ),
            ("[1, 2]", "in.txt:1: not a JSON object: an array"),
            ("{\"text\": \"a\"", "in.txt:1: not JSON"),
        ] {
            let e = j(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e} / {want}");
        }
    }

    #[test]
    fn streams_are_bounded() {
        let r = TextInput::from_reader(Path::new("-"), &b"hello"[..]).unwrap();
        assert_eq!(r.bytes, b"hello");
        assert_eq!(
            r.hash(),
            format!("blake3:{}", blake3::hash(b"hello").to_hex())
        );
    }
}
