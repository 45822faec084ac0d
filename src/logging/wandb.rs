//! Weights & Biases offline runs: the folder `wandb offline` writes and `wandb sync DIR`
//! uploads later.
//!
//! ```text
//! DIR/wandb/offline-run-YYYYMMDD_HHMMSS-<id>/
//!     run-<id>.wandb          the run's records (below)
//!     files/wandb-metadata.json, files/wandb-summary.json
//! ```
//!
//! `run-<id>.wandb` is a LevelDB-style log (W&B's `datastore.py`): a 7-byte header (`:W&B`,
//! u16 LE 0xBEE1, u8 version 0), then 32 KiB blocks of chunks, each with a 7-byte header
//! (u32 LE CRC-32/IEEE of the type byte and the payload, u16 LE length, u8 type 1 FULL,
//! 2 FIRST, 3 MIDDLE, 4 LAST); a block with fewer than 7 bytes left is zero-padded. Each
//! payload is one protobuf `wandb_internal.Record`, numbered from 1, in the order W&B's own
//! writer uses and `wandb sync` expects: header, run (with its config and telemetry),
//! telemetry, the step metric's definition, files; then per line the definitions of keys
//! not seen before, a history record and a summary update; at the end config (the summary
//! line's strings), exit (exit code, runtime), final, footer. `wandb sync` holds the exit record back until it reads final, then sends it:
//! a run without them (a killed logger) uploads as not finished.
//!
//! Every record is one `write` of its complete bytes and blocks are padded eagerly, so a
//! process killed at any moment leaves a file that reads cleanly to its last record.

use super::proto::wandb as pb;
use crate::error::{MnemoError, Result};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub const BLOCK_LEN: usize = 32768;
pub const HEADER_LEN: usize = 7;
pub const FULL: u8 = 1;
pub const FIRST: u8 = 2;
pub const MIDDLE: u8 = 3;
pub const LAST: u8 = 4;

/// The file header: `:W&B`, 0xBEE1 (LE), version 0.
pub const FILE_HEADER: [u8; 7] = [b':', b'W', b'&', b'B', 0xe1, 0xbe, 0];

/// The key of the step metric every history row carries: the line's step as `log mlflow`
/// gives it (its `step`, `epoch` or `batch`, else its line number). W&B's own `_step` must
/// grow with every row, so it counts rows, and a metric definition plots every other key
/// against this one.
pub const STEP_KEY: &str = "mnemo/step";

/// A LevelDB log being appended to.
pub struct LogWriter {
    path: PathBuf,
    file: std::fs::File,
    /// Bytes written so far (the file's length).
    offset: usize,
}

impl LogWriter {
    /// Creates `path` (it must not exist) with the file header.
    pub fn create(path: &Path) -> Result<LogWriter> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| MnemoError::io(path, e))?;
        let mut w = LogWriter {
            path: path.to_path_buf(),
            file,
            offset: 0,
        };
        w.write_bytes(&FILE_HEADER)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_bytes(&mut self, b: &[u8]) -> Result<()> {
        self.file
            .write_all(b)
            .map_err(|e| MnemoError::io(&self.path, e))?;
        self.offset += b.len();
        Ok(())
    }

    /// The chunks of one payload starting at `offset`: the bytes to append.
    pub fn frame(offset: usize, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 2 * HEADER_LEN);
        let mut pos = offset;
        let mut rest = payload;
        let mut first = true;
        loop {
            let left = BLOCK_LEN - pos % BLOCK_LEN;
            if left < HEADER_LEN {
                out.resize(out.len() + left, 0);
                pos += left;
                continue;
            }
            let room = left - HEADER_LEN;
            let (take, kind) = if rest.len() <= room {
                (rest.len(), if first { FULL } else { LAST })
            } else {
                (room, if first { FIRST } else { MIDDLE })
            };
            let (chunk, tail) = rest.split_at(take);
            let mut h = crc32fast::Hasher::new();
            h.update(&[kind]);
            h.update(chunk);
            out.extend_from_slice(&h.finalize().to_le_bytes());
            out.extend_from_slice(&(take as u16).to_le_bytes());
            out.push(kind);
            out.extend_from_slice(chunk);
            pos += HEADER_LEN + take;
            rest = tail;
            first = false;
            if kind == FULL || kind == LAST {
                break;
            }
        }
        // Pad now what the next record would pad, so the file ends on a whole record.
        let left = BLOCK_LEN - pos % BLOCK_LEN;
        if left < HEADER_LEN {
            out.resize(out.len() + left, 0);
        }
        out
    }

    /// Appends one payload (in one `write`).
    pub fn append(&mut self, payload: &[u8]) -> Result<()> {
        let bytes = Self::frame(self.offset, payload);
        self.write_bytes(&bytes)
    }

    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| MnemoError::io(&self.path, e))
    }
}

/// What a run is created with.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The W&B project (`wandb sync` uses it unless given --project; empty: W&B's default).
    pub project: String,
    /// The run's display name (empty: W&B picks one).
    pub name: String,
    /// The run's config at its start, as (key, JSON value).
    pub config: Vec<(String, String)>,
    /// The id (empty: a new random one of 8 characters [a-z0-9]).
    pub id: String,
}

/// A JSON number for `value_json`: integers as integers, other values as the shortest text
/// that reads back to the same double (`serde_json`'s), so values travel bit for bit.
pub fn json_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        format!("{}", x as i64)
    } else {
        serde_json::Number::from_f64(x)
            .map(|n| n.to_string())
            .unwrap_or_else(|| "null".to_string())
    }
}

fn timestamp(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A new run id: 8 characters of [a-z0-9] from the time, the process id and a counter.
pub fn new_run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let digest = h.finalize();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    digest.as_bytes()[..8]
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect()
}

/// Civil date and time (UTC) of a Unix time, for the folder name.
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

/// An offline run being written.
pub struct Run {
    dir: PathBuf,
    id: String,
    log: LogWriter,
    num: i64,
    rows: i64,
    start: SystemTime,
    /// The latest value of every key, for files/wandb-summary.json.
    summary: Vec<(String, String)>,
    /// The keys given a metric definition so far.
    defined: std::collections::HashSet<String>,
    metadata: serde_json::Value,
}

impl Run {
    /// Creates `root/wandb/offline-run-<date>_<time>-<id>/` and its first records.
    pub fn create(root: &Path, opts: &RunOptions) -> Result<Run> {
        let start = SystemTime::now();
        let id = if opts.id.is_empty() {
            new_run_id()
        } else {
            opts.id.clone()
        };
        let secs = start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let (y, mo, d, h, mi, s) = civil(secs);
        let dir = root.join("wandb").join(format!(
            "offline-run-{y:04}{mo:02}{d:02}_{h:02}{mi:02}{s:02}-{id}"
        ));
        let files = dir.join("files");
        std::fs::create_dir_all(&files).map_err(|e| MnemoError::io(&files, e))?;
        let log = LogWriter::create(&dir.join(format!("run-{id}.wandb")))?;
        let host = super::tensorboard::hostname();
        let since = start.duration_since(UNIX_EPOCH).unwrap_or_default();
        let metadata = serde_json::json!({
            "program": "mnemo log wandb",
            "args": std::env::args().skip(1).collect::<Vec<_>>(),
            "host": host,
            "startedAt": format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z", since.subsec_micros()),
            "mnemo": env!("CARGO_PKG_VERSION"),
        });
        let mut run = Run {
            dir,
            id: id.clone(),
            log,
            num: 0,
            rows: 0,
            start,
            summary: Vec::new(),
            defined: std::collections::HashSet::new(),
            metadata,
        };
        let platform = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
        run.record(pb::RecordType::Header(pb::HeaderRecord {
            version_info: Some(pb::VersionInfo {
                producer: concat!("mnemo ", env!("CARGO_PKG_VERSION")).to_string(),
                min_consumer: "0.40.0".to_string(),
            }),
        }))?;
        let telemetry = pb::TelemetryRecord {
            feature: Some(pb::Feature { offline: true }),
            platform,
        };
        run.record(pb::RecordType::Run(pb::RunRecord {
            run_id: id,
            entity: String::new(),
            project: opts.project.clone(),
            config: Some(pb::ConfigRecord {
                update: opts
                    .config
                    .iter()
                    .map(|(k, v)| pb::Item {
                        key: k.clone(),
                        value_json: v.clone(),
                    })
                    .collect(),
            }),
            display_name: opts.name.clone(),
            tags: Vec::new(),
            host,
            start_time: Some(pb::Timestamp {
                seconds: since.as_secs() as i64,
                nanos: since.subsec_nanos() as i32,
            }),
            telemetry: Some(telemetry.clone()),
        }))?;
        run.record(pb::RecordType::Telemetry(telemetry))?;
        // define_metric("mnemo/step"): the step metric, before any key that uses it.
        run.record(pb::RecordType::Metric(pb::MetricRecord {
            name: STEP_KEY.to_string(),
            options: Some(pb::MetricOptions {
                defined: true,
                ..Default::default()
            }),
            ..Default::default()
        }))?;
        run.write_metadata()?;
        run.record(pb::RecordType::Files(pb::FilesRecord {
            files: vec![pb::FilesItem {
                path: "wandb-metadata.json".to_string(),
                policy: 0,
                r#type: 1,
            }],
        }))?;
        run.log.sync()?;
        Ok(run)
    }

    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `.wandb` file.
    pub fn path(&self) -> &Path {
        self.log.path()
    }

    /// History rows written.
    pub fn rows(&self) -> i64 {
        self.rows
    }

    /// Records written.
    pub fn records(&self) -> i64 {
        self.num
    }

    fn record(&mut self, r: pb::RecordType) -> Result<()> {
        self.num += 1;
        let rec = pb::Record {
            num: self.num,
            record_type: Some(r),
            info: Some(pb::RecordInfo {
                stream_id: self.id.clone(),
            }),
        };
        self.log.append(&rec.encode_to_vec())
    }

    fn write_metadata(&self) -> Result<()> {
        let path = self.dir.join("files").join("wandb-metadata.json");
        let mut f = crate::checkpoint::AtomicFile::create(&path)?;
        let mut text = serde_json::to_string_pretty(&self.metadata).unwrap_or_default();
        text.push('\n');
        f.write_all(text.as_bytes())?;
        f.commit()
    }

    /// One history row: `values` (key, number) at the line's `step`, read at `time`; the
    /// row also holds `_step` (the row's index), `_timestamp`, `_runtime` and
    /// [`STEP_KEY`]. Before it, a metric definition for each key not seen before; after it,
    /// the summary update with the same values. Keys W&B reserves (a leading `_`, and
    /// [`STEP_KEY`] itself) get the prefix `mnemo/` (`mnemo/_x`, `mnemo/mnemo/step`).
    /// Nothing is written when `values` is empty.
    pub fn log(&mut self, values: &[(String, f64)], step: i64, time: SystemTime) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let values: Vec<(String, f64)> = values
            .iter()
            .map(|(k, v)| {
                if k.starts_with('_') || k == STEP_KEY {
                    (format!("mnemo/{k}"), *v)
                } else {
                    (k.clone(), *v)
                }
            })
            .collect();
        let values = &values[..];
        let ts = timestamp(time);
        let runtime = time
            .duration_since(self.start)
            .map_or(0.0, |d| d.as_secs_f64());
        // A key's first row is preceded by its definition, as define_metric(key,
        // step_metric="mnemo/step") writes it: `wandb sync` uploads these (a glob "*" would
        // be expanded only by the writing process's handler, and is not stored).
        for (k, _) in values {
            if self.defined.contains(k) {
                continue;
            }
            self.defined.insert(k.clone());
            self.record(pb::RecordType::Metric(pb::MetricRecord {
                name: k.clone(),
                step_metric: STEP_KEY.to_string(),
                options: Some(pb::MetricOptions {
                    step_sync: true,
                    defined: true,
                    ..Default::default()
                }),
                ..Default::default()
            }))?;
        }
        let mut items: Vec<pb::Item> = Vec::with_capacity(values.len() + 4);
        let mut push = |k: &str, v: String| {
            items.push(pb::Item {
                key: k.to_string(),
                value_json: v,
            })
        };
        push("_step", self.rows.to_string());
        push("_timestamp", json_number(ts));
        push("_runtime", json_number(runtime));
        push(STEP_KEY, step.to_string());
        for (k, v) in values {
            push(k, json_number(*v));
        }
        let row = self.rows;
        self.record(pb::RecordType::History(pb::HistoryRecord {
            item: items.clone(),
            step: Some(pb::HistoryStep { num: row }),
        }))?;
        self.rows += 1;
        self.record(pb::RecordType::Summary(pb::SummaryRecord {
            update: items.clone(),
        }))?;
        for it in items {
            match self.summary.iter_mut().find(|(k, _)| *k == it.key) {
                Some(slot) => slot.1 = it.value_json,
                None => self.summary.push((it.key, it.value_json)),
            }
        }
        Ok(())
    }

    /// Config updates: (key, JSON value).
    pub fn config(&mut self, items: &[(String, String)]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.record(pb::RecordType::Config(pb::ConfigRecord {
            update: items
                .iter()
                .map(|(k, v)| pb::Item {
                    key: k.clone(),
                    value_json: v.clone(),
                })
                .collect(),
        }))
    }

    /// fsyncs the log.
    pub fn sync(&mut self) -> Result<()> {
        self.log.sync()
    }

    /// Ends the run: exit (with `exit_code`: 0 finished, else failed), final and footer,
    /// then files/wandb-summary.json.
    pub fn finish(mut self, exit_code: i32) -> Result<()> {
        let runtime = SystemTime::now()
            .duration_since(self.start)
            .map_or(0, |d| d.as_secs().min(i32::MAX as u64) as i32);
        self.record(pb::RecordType::Exit(pb::RunExitRecord {
            exit_code,
            runtime,
        }))?;
        self.record(pb::RecordType::Final(pb::FinalRecord {}))?;
        self.record(pb::RecordType::Footer(pb::FooterRecord {}))?;
        self.log.sync()?;
        let mut summary = serde_json::Map::new();
        for (k, v) in &self.summary {
            summary.insert(
                k.clone(),
                serde_json::from_str(v).unwrap_or(serde_json::Value::Null),
            );
        }
        let path = self.dir.join("files").join("wandb-summary.json");
        let mut f = crate::checkpoint::AtomicFile::create(&path)?;
        let mut text = serde_json::Value::Object(summary).to_string();
        text.push('\n');
        f.write_all(text.as_bytes())?;
        f.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a log back as W&B's datastore.py does (padding, FULL / FIRST..LAST, CRCs).
    fn scan(bytes: &[u8]) -> Vec<Vec<u8>> {
        assert_eq!(&bytes[..7], &FILE_HEADER);
        let mut pos = 7;
        let mut out = Vec::new();
        let mut cur: Option<Vec<u8>> = None;
        while pos < bytes.len() {
            let left = BLOCK_LEN - pos % BLOCK_LEN;
            if left < HEADER_LEN {
                assert!(bytes[pos..pos + left].iter().all(|b| *b == 0));
                pos += left;
                continue;
            }
            let crc = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap());
            let len = u16::from_le_bytes([bytes[pos + 4], bytes[pos + 5]]) as usize;
            let kind = bytes[pos + 6];
            let data = &bytes[pos + 7..pos + 7 + len];
            let mut h = crc32fast::Hasher::new();
            h.update(&[kind]);
            h.update(data);
            assert_eq!(crc, h.finalize());
            assert!(
                pos % BLOCK_LEN + 7 + len <= BLOCK_LEN,
                "a chunk crosses a block"
            );
            pos += 7 + len;
            match kind {
                FULL => out.push(data.to_vec()),
                FIRST => cur = Some(data.to_vec()),
                MIDDLE => cur.as_mut().unwrap().extend_from_slice(data),
                LAST => {
                    let mut d = cur.take().unwrap();
                    d.extend_from_slice(data);
                    out.push(d);
                }
                k => panic!("chunk type {k}"),
            }
        }
        assert_eq!(pos, bytes.len());
        out
    }

    #[test]
    fn chunks_blocks_and_padding() {
        // Payloads that fill a block to 0..8 bytes from its end, span blocks, or are large.
        let mut bytes = FILE_HEADER.to_vec();
        let mut payloads = Vec::new();
        for (i, n) in [
            BLOCK_LEN - 7 - 7 - 3,
            10,
            0,
            BLOCK_LEN * 2 + 100,
            1,
            BLOCK_LEN - 7,
        ]
        .into_iter()
        .enumerate()
        {
            let p: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            bytes.extend(LogWriter::frame(bytes.len(), &p));
            payloads.push(p);
        }
        assert_eq!(scan(&bytes), payloads);
        // The first payload left 3 bytes of its block: padded at once.
        let first_end = 7 + 7 + (BLOCK_LEN - 17);
        assert_eq!(first_end, BLOCK_LEN - 3);
        assert_eq!(&bytes[first_end..BLOCK_LEN], &[0, 0, 0]);
    }

    #[test]
    fn numbers_and_dates() {
        assert_eq!(json_number(3.0), "3");
        assert_eq!(json_number(-0.5), "-0.5");
        assert_eq!(json_number(1.4149450735535913), "1.4149450735535913");
        assert_eq!(json_number(1e300), "1e+300");
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_796_190_787), (2026, 12, 2, 5, 53, 7));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        let id = new_run_id();
        assert_eq!(id.len(), 8);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(id, new_run_id());
    }
}
