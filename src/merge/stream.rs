//! Streaming safetensors output: the header is written first (every size is
//! known from the inputs), then each tensor's bytes as they are computed,
//! through [`AtomicFile`]. The layout and header are exactly those of
//! [`crate::checkpoint::write_checkpoint`] (tensors by element size, largest
//! first, then name; header padded with spaces to 8 bytes; `"format": "pt"`),
//! so the same tensors give the same bytes either way.

use crate::checkpoint::{header_bytes, AtomicFile, Dtype};
use crate::error::Result;
use std::collections::BTreeMap;

/// One tensor of the output, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl LayoutEntry {
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Puts tensors in `write_checkpoint`'s order: element size descending, then name.
pub fn plan_layout(mut entries: Vec<LayoutEntry>) -> Vec<LayoutEntry> {
    entries.sort_by(|a, b| {
        b.dtype
            .size()
            .cmp(&a.dtype.size())
            .then_with(|| a.name.cmp(&b.name))
    });
    entries
}

/// The header bytes (length prefix excluded) for `entries` in the given order, with
/// `"format": "pt"` added as `write_checkpoint` does.
fn header_json(entries: &[LayoutEntry], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut meta = metadata.clone();
    meta.entry("format".into()).or_insert_with(|| "pt".into());
    header_bytes(
        entries
            .iter()
            .map(|e| (e.name.as_str(), e.dtype, e.shape.as_slice(), e.nbytes())),
        &meta,
    )
}

/// Writes the length prefix and header for `entries` (already in file order);
/// the caller then writes each tensor's bytes in that order and commits.
/// Returns the bytes written (8 + the padded header).
pub fn write_header(
    out: &mut AtomicFile,
    entries: &[LayoutEntry],
    metadata: &BTreeMap<String, String>,
) -> Result<usize> {
    let header = header_json(entries, metadata);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    Ok(8 + header.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{write_checkpoint, OwnedTensor};
    use std::borrow::Cow;

    #[test]
    fn same_bytes_as_write_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = || {
            vec![
                OwnedTensor::f32("b.w", vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                OwnedTensor {
                    name: "a.n".into(),
                    dtype: Dtype::I64,
                    shape: vec![],
                    data: Cow::Owned(3i64.to_le_bytes().to_vec()),
                },
                OwnedTensor {
                    name: "c.h".into(),
                    dtype: Dtype::F16,
                    shape: vec![3],
                    data: Cow::Owned(vec![0, 60, 0, 61, 0, 62]),
                },
                OwnedTensor::f32("a.w", vec![1], &[7.0]),
            ]
        };
        let mut meta = BTreeMap::new();
        meta.insert("mnemo.arch".to_string(), "mlp:2-3".to_string());
        let want = dir.path().join("want.safetensors");
        write_checkpoint(&want, tensors(), &meta).unwrap();

        let got = dir.path().join("got.safetensors");
        let entries = plan_layout(
            tensors()
                .iter()
                .map(|t| LayoutEntry {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                })
                .collect(),
        );
        let by_name: BTreeMap<String, Vec<u8>> = tensors()
            .into_iter()
            .map(|t| (t.name, t.data.into_owned()))
            .collect();
        let mut out = AtomicFile::create(&got).unwrap();
        write_header(&mut out, &entries, &meta).unwrap();
        for e in &entries {
            out.write_all(&by_name[&e.name]).unwrap();
        }
        out.commit().unwrap();
        assert_eq!(std::fs::read(&want).unwrap(), std::fs::read(&got).unwrap());
    }
}
