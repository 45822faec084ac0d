//! TensorBoard event files: TFRecord framing around `Event` protobufs.
//!
//! A record is `u64 LE length, u32 LE masked CRC-32C of the length bytes, data, u32 LE
//! masked CRC-32C of the data`, mask = `((crc >> 15) | (crc << 17)) + 0xa282ead8`. The first
//! event holds `file_version: "brain.Event:2"`; each later one a `Summary` of scalars
//! (`simple_value`, a 32-bit float as TensorBoard stores it) at one step.
//!
//! The file is append-only: each record is one `write` of its complete bytes, so a process
//! killed at any moment leaves whole records (TensorBoard's reader also skips a truncated
//! last record). `sync` fsyncs for durability past a machine crash.

use super::proto::tensorboard::{Event, Summary, SummaryValue, What};
use crate::error::{MnemoError, Result};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The masked CRC-32C TFRecord uses.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    // ((crc >> 15) | (crc << 17)) + 0xa282ead8
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: the framing around `data`.
pub fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The machine's name, for file names (`localhost` when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// An event file being written.
pub struct EventFile {
    path: PathBuf,
    file: std::fs::File,
    events: u64,
}

impl EventFile {
    /// Creates `dir` (and its parents) and in it a new
    /// `events.out.tfevents.<seconds>.<host>.<pid>.<n>` file (the first n that is free),
    /// starting with the file_version event.
    pub fn create(dir: &Path, wall_time: f64) -> Result<EventFile> {
        std::fs::create_dir_all(dir).map_err(|e| MnemoError::io(dir, e))?;
        let base = format!(
            "events.out.tfevents.{}.{}.{}",
            wall_time.floor() as i64,
            hostname().replace(['/', '\\'], "_"),
            std::process::id()
        );
        let mut n = 0u32;
        let (path, file) = loop {
            let path = dir.join(format!("{base}.{n}"));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(MnemoError::io(&path, e)),
            }
        };
        let mut ev = EventFile {
            path,
            file,
            events: 0,
        };
        ev.write(&Event {
            wall_time,
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".to_string())),
        })?;
        ev.sync()?;
        Ok(ev)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Events written, the file_version event included.
    pub fn events(&self) -> u64 {
        self.events
    }

    fn write(&mut self, ev: &Event) -> Result<()> {
        let rec = tfrecord(&ev.encode_to_vec());
        self.file
            .write_all(&rec)
            .map_err(|e| MnemoError::io(&self.path, e))?;
        self.events += 1;
        Ok(())
    }

    /// One event: `values` as scalars (tag, value) at `step`, `wall_time` in seconds since
    /// the Unix epoch. Nothing is written when `values` is empty.
    pub fn scalars(&mut self, wall_time: f64, step: i64, values: &[(String, f64)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let summary = Summary {
            value: values
                .iter()
                .map(|(tag, v)| SummaryValue {
                    tag: tag.clone(),
                    simple_value: Some(*v as f32),
                })
                .collect(),
        };
        self.write(&Event {
            wall_time,
            step,
            what: Some(What::Summary(summary)),
        })
    }

    /// fsyncs the file.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| MnemoError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRC-32C check value, CRC-32C("123456789") = 0xe3069283, and its mask as
    /// tensorboard's own `masked_crc32c` computes it (0xc78ab0e5, tensorboard 2.21.0).
    #[test]
    fn crc_and_framing() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        let r = tfrecord(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
    }

    /// The bytes protoc's code gives for an Event with a zero simple_value (it must be
    /// present: TensorBoard skips a value with no `value` member).
    #[test]
    fn zero_scalars_are_encoded() {
        let ev = Event {
            wall_time: 0.0,
            step: 0,
            what: Some(What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: "a".into(),
                    simple_value: Some(0.0),
                }],
            })),
        };
        // summary (5, len 10) { value (1, len 8) { tag (1) "a", simple_value (2) 0f32 } }
        assert_eq!(
            ev.encode_to_vec(),
            vec![0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15, 0, 0, 0, 0]
        );
    }
}
