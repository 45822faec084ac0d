//! Examples arriving on a pipe (stdin or a FIFO), as chunks a producer in any language can
//! write cheaply, in one of two framings:
//!
//! - **safetensors frames**: whole safetensors files back to back, each a small dataset
//!   (`input` [n, ...], `target` [n] / [n, K] / [n, H, W]). A frame is self-delimiting: its
//!   8-byte header length, its JSON header, then exactly the bytes its offsets cover. In
//!   Python: `sys.stdout.buffer.write(safetensors.numpy.save({"input": x, "target": y}))`.
//! - **JSON Lines**: one example per line, `{"input": [[0.1, ...], ...], "target": 3}`: the
//!   input a (nested) array of numbers, the target a class id, a 0/1 list (multi-hot) or a
//!   list of lists (a mask). Lines are grouped into chunks of `chunk` examples.
//!
//! The framing is told from the first bytes (a frame starts with a small little-endian length
//! and then `{`; a JSON line starts with `{"`). Every example of a stream has the first one's
//! shapes. A producer that stops inside a frame or a line is an error naming the chunk (or
//! line); nothing of that chunk is handed on. Sizes are bounded before anything is allocated.

use super::{Dataset, TargetKind};
use crate::checkpoint::Checkpoint;
use crate::error::{MnemoError, Result};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

/// The largest JSON header of a frame (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// How a stream is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFormat {
    Safetensors,
    JsonLines,
}

/// Reading settings.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// The framing; `None` tells it from the first bytes.
    pub format: Option<StreamFormat>,
    /// Examples per chunk of a JSON Lines stream (frames are chunks as they come).
    pub chunk: usize,
    /// The largest frame (or JSON line) accepted, in bytes.
    pub max_chunk_bytes: u64,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            format: None,
            chunk: 1,
            max_chunk_bytes: 1 << 30,
        }
    }
}

/// One chunk of a stream.
pub struct Chunk {
    /// 0-based position among the stream's chunks.
    pub index: u64,
    /// The stream position of its first example (examples before it in the stream).
    pub first: u64,
    pub data: Dataset,
}

/// The shapes every example of a stream shares (fixed by its first).
#[derive(Clone, Debug, PartialEq)]
struct Shapes {
    example: Vec<usize>,
    kind: TargetKind,
}

/// Reads chunks from `R`; an iterator of `Result<Chunk>` that ends at the stream's end (or
/// at the first error).
pub struct StreamReader<R: BufRead> {
    r: Prefixed<R>,
    label: PathBuf,
    opts: StreamOptions,
    format: Option<StreamFormat>,
    chunks: u64,
    examples: u64,
    /// Lines read so far (JSON Lines).
    line: u64,
    shapes: Option<Shapes>,
    done: bool,
}

impl<R: BufRead> StreamReader<R> {
    /// `label` names the stream in messages (`-` for stdin, a FIFO's path).
    pub fn new(r: R, label: impl Into<PathBuf>, opts: StreamOptions) -> Self {
        StreamReader {
            r: Prefixed {
                prefix: Vec::new(),
                at: 0,
                r,
            },
            label: label.into(),
            format: opts.format,
            opts,
            chunks: 0,
            examples: 0,
            line: 0,
            shapes: None,
            done: false,
        }
    }

    /// The framing, once known (after the first chunk).
    pub fn format(&self) -> Option<StreamFormat> {
        self.format
    }

    fn bad(&self, reason: String) -> MnemoError {
        MnemoError::InvalidDataset {
            path: self.label.clone(),
            reason,
        }
    }

    /// Tells the framing from the first nine bytes (read ahead, then read again).
    fn detect(&mut self) -> Result<Option<StreamFormat>> {
        let mut head = [0u8; 9];
        let n = self.read_full(&mut head)?;
        self.r.unread(&head[..n]);
        if n == 0 {
            return Ok(None);
        }
        let frame = n == 9
            && u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) <= MAX_HEADER
            && head[8] == b'{';
        Ok(Some(
            if !frame && (head[0] == b'{' || head[0].is_ascii_whitespace()) {
                StreamFormat::JsonLines
            } else {
                StreamFormat::Safetensors
            },
        ))
    }

    /// Reads exactly `buf.len()` bytes; returns how many arrived before the end.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(MnemoError::io(&self.label, e)),
            }
        }
        Ok(got)
    }

    fn next_frame(&mut self) -> Result<Option<Dataset>> {
        let i = self.chunks;
        let mut len = [0u8; 8];
        match self.read_full(&mut len)? {
            0 => return Ok(None),
            8 => {}
            k => {
                return Err(self.bad(format!(
                    "chunk {i} ends after {k} of its 8 header-length bytes (the producer stopped mid-chunk)"
                )))
            }
        }
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER || n > self.opts.max_chunk_bytes {
            return Err(self.bad(format!(
                "chunk {i}: a header of {n} bytes is more than the {} allowed (not a safetensors frame?)",
                MAX_HEADER.min(self.opts.max_chunk_bytes)
            )));
        }
        let mut header = vec![0u8; n as usize];
        let got = self.read_full(&mut header)?;
        if got < header.len() {
            return Err(self.bad(format!(
                "chunk {i} ends after {got} of its {n} header bytes (the producer stopped mid-chunk)"
            )));
        }
        let data_len = frame_data_len(&header)
            .map_err(|e| self.bad(format!("chunk {i}: not a safetensors frame: {e}")))?;
        let total = 8 + n + data_len;
        if total > self.opts.max_chunk_bytes {
            return Err(self.bad(format!(
                "chunk {i} is {total} bytes, more than the {} allowed",
                self.opts.max_chunk_bytes
            )));
        }
        let mut bytes = Vec::with_capacity(total as usize);
        bytes.extend_from_slice(&len);
        bytes.extend_from_slice(&header);
        bytes.resize(total as usize, 0);
        let start = 8 + n as usize;
        let got = self.read_full(&mut bytes[start..])?;
        if (got as u64) < data_len {
            return Err(self.bad(format!(
                "chunk {i} ends after {got} of its {data_len} data bytes (the producer stopped mid-chunk)"
            )));
        }
        let label = PathBuf::from(format!("{} chunk {i}", self.label.display()));
        let ckpt = Checkpoint::from_bytes(&label, bytes)?;
        let d = Dataset::from_checkpoint(&ckpt)?;
        self.check_shapes(&d.example_shape, d.target_kind, || format!("chunk {i}"))?;
        Ok(Some(d))
    }

    /// Examples of chunk `i` must have the stream's shapes (set by its first example).
    fn check_shapes(
        &mut self,
        example: &[usize],
        kind: TargetKind,
        at: impl Fn() -> String,
    ) -> Result<()> {
        let s = Shapes {
            example: example.to_vec(),
            kind,
        };
        match &self.shapes {
            None => {
                self.shapes = Some(s);
                Ok(())
            }
            Some(first) if *first == s => Ok(()),
            Some(first) => Err(self.bad(format!(
                "{}: examples of shape {:?} with {}, but the stream's first had {:?} with {}",
                at(),
                s.example,
                s.kind.describe(),
                first.example,
                first.kind.describe()
            ))),
        }
    }

    fn next_lines(&mut self) -> Result<Option<Dataset>> {
        let mut inputs = Vec::new();
        let mut targets = Vec::new();
        let mut n = 0usize;
        let mut buf = Vec::new();
        while n < self.opts.chunk.max(1) {
            buf.clear();
            let limit = self.opts.max_chunk_bytes.saturating_add(1);
            let got = (&mut self.r)
                .take(limit)
                .read_until(b'\n', &mut buf)
                .map_err(|e| MnemoError::io(&self.label, e))?;
            if got == 0 {
                break;
            }
            self.line += 1;
            let line_no = self.line;
            if got as u64 >= limit {
                return Err(self.bad(format!(
                    "line {line_no} is longer than the {} bytes allowed",
                    self.opts.max_chunk_bytes
                )));
            }
            let complete = buf.last() == Some(&b'\n');
            let text = std::str::from_utf8(&buf)
                .map_err(|_| self.bad(format!("line {line_no} is not UTF-8")))?;
            if text.trim().is_empty() {
                continue;
            }
            let ex = parse_example(text).map_err(|e| {
                self.bad(if complete {
                    format!("line {line_no}: {e}")
                } else {
                    format!(
                        "line {line_no} ends without a newline and does not parse (the producer stopped mid-line?): {e}"
                    )
                })
            })?;
            self.check_shapes(&ex.shape, ex.kind, || format!("line {line_no}"))?;
            inputs.extend(ex.input);
            targets.extend(ex.target);
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        let s = self.shapes.clone().expect("set by the first example");
        Ok(Some(Dataset {
            path: PathBuf::from(format!("{} chunk {}", self.label.display(), self.chunks)),
            example_shape: s.example,
            inputs,
            targets,
            target_kind: s.kind,
            from_u8: false,
        }))
    }
}

impl<R: BufRead> Iterator for StreamReader<R> {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Result<Chunk>> {
        if self.done {
            return None;
        }
        let r = (|| {
            if self.format.is_none() {
                match self.detect()? {
                    None => return Ok(None),
                    Some(f) => self.format = Some(f),
                }
            }
            match self.format {
                Some(StreamFormat::Safetensors) => self.next_frame(),
                _ => self.next_lines(),
            }
        })();
        match r {
            Ok(Some(data)) => {
                let c = Chunk {
                    index: self.chunks,
                    first: self.examples,
                    data,
                };
                self.chunks += 1;
                self.examples += c.data.len() as u64;
                Some(Ok(c))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A reader with bytes put back in front of it (what format detection read ahead).
struct Prefixed<R> {
    prefix: Vec<u8>,
    at: usize,
    r: R,
}

impl<R> Prefixed<R> {
    fn unread(&mut self, bytes: &[u8]) {
        let mut p = bytes.to_vec();
        p.extend_from_slice(&self.prefix[self.at..]);
        self.prefix = p;
        self.at = 0;
    }
}

impl<R: BufRead> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at < self.prefix.len() {
            let n = buf.len().min(self.prefix.len() - self.at);
            buf[..n].copy_from_slice(&self.prefix[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        self.r.read(buf)
    }
}

impl<R: BufRead> BufRead for Prefixed<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.at < self.prefix.len() {
            return Ok(&self.prefix[self.at..]);
        }
        self.r.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if self.at < self.prefix.len() {
            self.at = (self.at + amt).min(self.prefix.len());
        } else {
            self.r.consume(amt);
        }
    }
}

/// The data length a frame's header promises: the largest end offset of its tensors.
fn frame_data_len(header: &[u8]) -> std::result::Result<u64, String> {
    let v: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format!("its header is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("its header is not a JSON object")?;
    let mut end = 0u64;
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let off = t
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| format!("tensor '{name}' has no [begin, end] data_offsets"))?;
        let e = off[1]
            .as_u64()
            .ok_or_else(|| format!("tensor '{name}': data_offsets must be integers"))?;
        end = end.max(e);
    }
    Ok(end)
}

/// One JSON Lines example.
struct Example {
    shape: Vec<usize>,
    input: Vec<f32>,
    kind: TargetKind,
    target: Vec<i64>,
}

/// A (nested) array of numbers: its shape and values in row-major order.
fn flatten(
    v: &serde_json::Value,
    what: &str,
) -> std::result::Result<(Vec<usize>, Vec<f64>), String> {
    fn walk(
        v: &serde_json::Value,
        depth: usize,
        shape: &mut Vec<usize>,
        out: &mut Vec<f64>,
        what: &str,
    ) -> std::result::Result<(), String> {
        if depth > 8 {
            return Err(format!("'{what}' is nested more than 8 deep"));
        }
        match v {
            serde_json::Value::Array(a) => {
                if shape.len() == depth {
                    shape.push(a.len());
                } else if shape.len() < depth || shape[depth] != a.len() {
                    return Err(format!("'{what}' is ragged (rows of different lengths)"));
                }
                for x in a {
                    walk(x, depth + 1, shape, out, what)?;
                }
                Ok(())
            }
            serde_json::Value::Number(n) => {
                if shape.len() != depth {
                    return Err(format!("'{what}' mixes numbers and arrays at one level"));
                }
                let x = n.as_f64().filter(|x| x.is_finite());
                out.push(x.ok_or_else(|| format!("'{what}' holds a non-finite number"))?);
                Ok(())
            }
            _ => Err(format!("'{what}' must hold numbers only")),
        }
    }
    let (mut shape, mut out) = (Vec::new(), Vec::new());
    walk(v, 0, &mut shape, &mut out, what)?;
    Ok((shape, out))
}

fn parse_example(text: &str) -> std::result::Result<Example, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("not a JSON object {\"input\": [...], \"target\": ...}")?;
    if let Some(k) = obj.keys().find(|k| *k != "input" && *k != "target") {
        return Err(format!(
            "unknown key '{k}' (an example has 'input' and 'target')"
        ));
    }
    let input = obj.get("input").ok_or("no 'input'")?;
    let target = obj.get("target").ok_or("no 'target'")?;
    let (shape, x) = flatten(input, "input")?;
    if shape.is_empty() || x.is_empty() {
        return Err("'input' must be a non-empty array".into());
    }
    let (tshape, t) = match target {
        serde_json::Value::Number(_) => (Vec::new(), flatten(target, "target")?.1),
        _ => flatten(target, "target")?,
    };
    let mut ids = Vec::with_capacity(t.len());
    for v in &t {
        if v.fract() != 0.0 || *v < 0.0 || *v > i64::MAX as f64 {
            return Err(format!(
                "'target' holds {v}: targets are non-negative integers"
            ));
        }
        ids.push(*v as i64);
    }
    let kind = match tshape.as_slice() {
        [] => TargetKind::Class,
        [k] if *k > 0 => {
            if let Some(v) = ids.iter().find(|&&v| v > 1) {
                return Err(format!("'target' holds {v}: multi-hot targets are 0 or 1"));
            }
            TargetKind::MultiLabel { k: *k }
        }
        [h, w] if *h > 0 && *w > 0 => TargetKind::Mask { h: *h, w: *w },
        s => {
            return Err(format!(
                "'target' has shape {s:?}: a class id, a 0/1 list or a mask (list of lists)"
            ))
        }
    };
    Ok(Example {
        shape,
        input: x.iter().map(|&v| v as f32).collect(),
        kind,
        target: ids,
    })
}

/// Every chunk of a stream as one dataset (`eval --data -`).
pub fn read_all<R: BufRead>(r: StreamReader<R>, label: &Path) -> Result<Dataset> {
    let mut all: Option<Dataset> = None;
    for c in r {
        let c = c?;
        match &mut all {
            None => all = Some(c.data),
            Some(a) => {
                a.inputs.extend(c.data.inputs);
                a.targets.extend(c.data.targets);
                a.from_u8 &= c.data.from_u8;
            }
        }
    }
    let mut d = all.ok_or_else(|| MnemoError::InvalidDataset {
        path: label.to_path_buf(),
        reason: "the stream ended before its first example".into(),
    })?;
    d.path = label.to_path_buf();
    Ok(d)
}

/// Writes examples `from..from + n` of `d` as one chunk in `format` (a safetensors frame, or
/// `n` JSON lines): what `data stream` sends and what [`StreamReader`] reads back as the
/// same values (U8 inputs stay U8 in frames; JSON numbers are the f32 values' shortest
/// decimal form, read back exactly).
pub fn write_chunk(
    d: &Dataset,
    from: usize,
    n: usize,
    format: StreamFormat,
    w: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let per_x = d.example_shape.iter().product::<usize>();
    let per_t = d.target_kind.per_example();
    let x = &d.inputs[from * per_x..(from + n) * per_x];
    let t = &d.targets[from * per_t..(from + n) * per_t];
    let target_shape: Vec<usize> = match d.target_kind {
        TargetKind::Class => vec![],
        TargetKind::MultiLabel { k } => vec![k],
        TargetKind::Mask { h, w } => vec![h, w],
        TargetKind::Tokens { t } => vec![t],
    };
    let tokens = matches!(d.target_kind, TargetKind::Tokens { .. });
    match format {
        StreamFormat::Safetensors => {
            let mut xs = vec![n];
            xs.extend(&d.example_shape);
            let mut ts = vec![n];
            ts.extend(&target_shape);
            let (xd, xb): (safetensors::Dtype, Vec<u8>) = if tokens {
                // Token ids stay integers, so the frame reads back as token data.
                let b = x.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect();
                (safetensors::Dtype::I64, b)
            } else if d.from_u8 {
                let b = x
                    .iter()
                    .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
                    .collect();
                (safetensors::Dtype::U8, b)
            } else {
                (
                    safetensors::Dtype::F32,
                    x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            };
            let tb: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = |dt, shape, data| {
                safetensors::tensor::TensorView::new(dt, shape, data)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            };
            let views = vec![
                ("input", view(xd, xs, &xb)?),
                ("target", view(safetensors::Dtype::I64, ts, &tb)?),
            ];
            let bytes = safetensors::tensor::serialize(views, None)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            w.write_all(&bytes)
        }
        StreamFormat::JsonLines if tokens => Err(std::io::Error::other(
            "token datasets stream as safetensors frames: JSON Lines inputs read back as numbers, not token ids",
        )),
        StreamFormat::JsonLines => {
            // Rust's f32 Display is the shortest decimal that reads back to the same f32
            // (never an exponent, never NaN here: datasets are finite), so it is valid JSON.
            fn nest(out: &mut String, v: &[f32], shape: &[usize]) {
                out.push('[');
                match shape {
                    [] | [_] => {
                        for (i, x) in v.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            out.push_str(&x.to_string());
                        }
                    }
                    [_, rest @ ..] => {
                        let step = rest.iter().product::<usize>().max(1);
                        for (i, c) in v.chunks(step).enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            nest(out, c, rest);
                        }
                    }
                }
                out.push(']');
            }
            let mut line = String::new();
            for i in 0..n {
                let xi = &x[i * per_x..(i + 1) * per_x];
                let ti = &t[i * per_t..(i + 1) * per_t];
                let target = match d.target_kind {
                    TargetKind::Class => serde_json::json!(ti[0]),
                    TargetKind::MultiLabel { .. } => serde_json::json!(ti),
                    TargetKind::Mask { w, .. } => serde_json::Value::Array(
                        ti.chunks(w).map(|r| serde_json::json!(r)).collect(),
                    ),
                    TargetKind::Tokens { .. } => unreachable!("refused above"),
                };
                line.clear();
                line.push_str("{\"input\":");
                nest(&mut line, xi, &d.example_shape);
                line.push_str(",\"target\":");
                line.push_str(&target.to_string());
                line.push_str("}\n");
                w.write_all(line.as_bytes())?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize, classes: i64) -> Vec<u8> {
        let x: Vec<f32> = (0..n * 4).map(|i| i as f32 / 10.0).collect();
        let y: Vec<i64> = (0..n as i64).map(|i| i % classes).collect();
        let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let yb: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            (
                "input",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, 4], &xb)
                    .unwrap(),
            ),
            (
                "target",
                safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![n], &yb)
                    .unwrap(),
            ),
        ];
        safetensors::tensor::serialize(views, None).unwrap()
    }

    fn read(bytes: &[u8], chunk: usize) -> Vec<Result<Chunk>> {
        let opts = StreamOptions {
            chunk,
            ..Default::default()
        };
        StreamReader::new(std::io::Cursor::new(bytes.to_vec()), "-", opts).collect()
    }

    #[test]
    fn frames_back_to_back_are_chunks() {
        let mut s = frame(3, 2);
        s.extend(frame(2, 2));
        let chunks: Vec<Chunk> = read(&s, 1).into_iter().map(|c| c.unwrap()).collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            (chunks[0].index, chunks[0].first, chunks[0].data.len()),
            (0, 0, 3)
        );
        assert_eq!(
            (chunks[1].index, chunks[1].first, chunks[1].data.len()),
            (1, 3, 2)
        );
        assert_eq!(chunks[1].data.inputs[..4], [0.0, 0.1, 0.2, 0.3]);
    }

    #[test]
    fn a_frame_cut_anywhere_is_an_error_naming_the_chunk() {
        let mut s = frame(3, 2);
        let second = frame(2, 2);
        for cut in [1, 7, 8, 20, second.len() - 1] {
            let mut t = s.clone();
            t.extend_from_slice(&second[..cut]);
            let r = read(&t, 1);
            assert_eq!(r.len(), 2, "cut {cut}");
            assert!(r[0].is_ok());
            let e = r[1].as_ref().err().unwrap().to_string();
            assert!(
                e.contains("chunk 1") && e.contains("mid-chunk"),
                "cut {cut}: {e}"
            );
        }
        s.clear();
        assert!(read(&s, 1).is_empty());
    }

    #[test]
    fn json_lines_are_grouped_and_checked() {
        let text = "{\"input\": [[1, 2], [3, 4]], \"target\": 1}\n\n{\"input\": [[5, 6], [7, 8]], \"target\": 0}\n{\"input\": [[0, 0], [0, 1]], \"target\": 2}";
        let chunks: Vec<Chunk> = read(text.as_bytes(), 2)
            .into_iter()
            .map(|c| c.unwrap())
            .collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].data.example_shape, [2, 2]);
        assert_eq!(chunks[0].data.targets, [1, 0]);
        assert_eq!(chunks[1].first, 2);
        assert_eq!(chunks[1].data.inputs, [0.0, 0.0, 0.0, 1.0]);
        for (bad, says) in [
            (
                "{\"input\": [1, 2], \"target\": 1}\n{\"input\": [1, 2, 3], \"target\": 1}\n",
                "line 2",
            ),
            ("{\"input\": [[1], [2, 3]], \"target\": 1}\n", "ragged"),
            ("{\"input\": [1], \"target\": -1}\n", "non-negative"),
            ("{\"input\": [1], \"target\": 1.5}\n", "non-negative"),
            (
                "{\"input\": [1], \"target\": 1, \"x\": 2}\n",
                "unknown key 'x'",
            ),
            (
                "{\"input\": [1], \"target\": 1}\n{\"input\": [1], \"tar",
                "mid-line",
            ),
            ("{\"input\": [1], \"target\": [0, 2]}\n", "0 or 1"),
        ] {
            let r = read(bad.as_bytes(), 1);
            let e = r.iter().find_map(|c| c.as_ref().err()).unwrap().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn masks_and_multi_hot_rows_by_their_nesting() {
        let m = read(b"{\"input\": [1, 2], \"target\": [[0, 1], [2, 255]]}\n", 1);
        let d = &m[0].as_ref().unwrap().data;
        assert_eq!(d.target_kind, TargetKind::Mask { h: 2, w: 2 });
        let k = read(b"{\"input\": [1, 2], \"target\": [0, 1, 1]}\n", 1);
        assert_eq!(
            k[0].as_ref().unwrap().data.target_kind,
            TargetKind::MultiLabel { k: 3 }
        );
    }

    #[test]
    fn what_write_chunk_sends_reads_back_unchanged() {
        let mut s = frame(5, 3);
        let d = read(&s, 1).remove(0).unwrap().data;
        for format in [StreamFormat::Safetensors, StreamFormat::JsonLines] {
            s.clear();
            write_chunk(&d, 0, 3, format, &mut s).unwrap();
            write_chunk(&d, 3, 2, format, &mut s).unwrap();
            let opts = StreamOptions {
                chunk: 3,
                ..Default::default()
            };
            let r = StreamReader::new(std::io::Cursor::new(s.clone()), "-", opts);
            let back = read_all(r, Path::new("-")).unwrap();
            assert_eq!(back.inputs, d.inputs, "{format:?}");
            assert_eq!(back.targets, d.targets, "{format:?}");
            assert_eq!(back.example_shape, d.example_shape, "{format:?}");
        }
    }

    #[test]
    fn read_all_joins_the_chunks() {
        let mut s = frame(3, 2);
        s.extend(frame(2, 2));
        let opts = StreamOptions::default();
        let r = StreamReader::new(std::io::Cursor::new(s), "-", opts);
        let d = read_all(r, Path::new("-")).unwrap();
        assert_eq!(d.len(), 5);
        assert_eq!(d.targets, [0, 1, 0, 0, 1]);
    }
}
