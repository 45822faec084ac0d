//! `mnemo data`: build task sequences from datasets (import, split, permute, shuffle,
//! take, concat, stats). Every output is a dataset safetensors (`input`, `target`)
//! written atomically, with provenance.

use super::{Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::data::raw::{import_idx, import_npy, RawDataset};
use mnemo::provenance::Provenance;
use serde_json::json;
use std::path::{Path, PathBuf};

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("MNIST from its IDX files (gzipped or not), flattened for an MLP", "mnemo data import idx train-images-idx3-ubyte train-labels-idx1-ubyte --flatten -o mnist-train.safetensors"),
        ("Split-MNIST task 2: digits 2 and 3, relabelled 0 and 1", "mnemo data split mnist-train.safetensors --classes 2,3 --relabel -o task2.safetensors"),
        ("Permuted-MNIST task with its own fixed pixel permutation", "mnemo data permute mnist-train.safetensors --seed 3 -o pmnist3.safetensors"),
        ("a 1000-example validation set after the first 50000", "mnemo data take mnist-train.safetensors 1000 --skip 50000 -o val.safetensors"),
        ("examples per class and value range", "mnemo data stats task2.safetensors"),
    ],
    exit_status: EXIT_PLAIN,
};

/// Dataset tools: every output holds `input` [N, ...] and `target` [N], written atomically.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Import a dataset from another format.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Keep the examples of some classes (a Split-MNIST task).
    Split {
        input: PathBuf,
        /// Class ids to keep, comma-separated.
        #[arg(long, value_delimiter = ',', required = true, value_name = "C,...")]
        classes: Vec<i64>,
        /// Renumber the kept classes 0, 1, ... in the order given (task-incremental heads).
        #[arg(long)]
        relabel: bool,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Apply one fixed, seeded permutation to the features of every example (Permuted MNIST).
    Permute {
        input: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// The same examples in a seeded random order.
    Shuffle {
        input: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// N examples in file order, after skipping K.
    Take {
        input: PathBuf,
        n: usize,
        #[arg(long, default_value_t = 0, value_name = "K")]
        skip: usize,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Datasets one after the other (same dtype and example shape).
    Concat {
        #[arg(required = true, num_args = 2..)]
        inputs: Vec<PathBuf>,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Examples per class, shape, dtype and value range, as JSON.
    Stats { input: PathBuf },
}

#[derive(clap::Subcommand, Debug)]
pub enum ImportCommand {
    /// MNIST / Fashion-MNIST IDX files (gzipped or not): input U8 [N,1,H,W] (or [N,H·W]).
    Idx {
        images: PathBuf,
        labels: PathBuf,
        /// Store each image as one row of H·W features (for MLPs).
        #[arg(long)]
        flatten: bool,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// NumPy arrays X [N, ...] (uint8 or float) and Y [N] (integer labels), .npy files.
    Npy {
        x: PathBuf,
        y: PathBuf,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
}

fn write(
    d: &RawDataset,
    out: &Path,
    inputs: &[&Path],
    extra: &[(&str, String)],
) -> anyhow::Result<()> {
    let mut prov = Provenance::from_args(&std::env::args().collect::<Vec<_>>());
    for p in inputs {
        prov.input(p.display().to_string(), mnemo::checkpoint::file_hash(p)?);
    }
    let mut meta = prov.metadata();
    for (k, v) in extra {
        meta.insert(format!("mnemo.data.{k}"), v.clone());
    }
    d.write(out, &meta)
        .with_context(|| format!("writing {}", out.display()))?;
    let counts: serde_json::Map<String, serde_json::Value> = d
        .class_counts()
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    JsonLines::stdout().emit(&json!({
        "output": out.display().to_string(), "examples": d.len(), "dtype": d.dtype.to_string(),
        "example_shape": d.example_shape, "classes": counts,
    }))
}

pub fn run(args: Args, _g: &Global) -> anyhow::Result<Status> {
    match args.command {
        DataCommand::Import(ImportCommand::Idx {
            images,
            labels,
            flatten,
            output,
        }) => {
            let d = import_idx(&images, &labels, flatten)?;
            write(&d, &output, &[&images, &labels], &[])?;
        }
        DataCommand::Import(ImportCommand::Npy { x, y, output }) => {
            let d = import_npy(&x, &y)?;
            write(&d, &output, &[&x, &y], &[])?;
        }
        DataCommand::Split {
            input,
            classes,
            relabel,
            output,
        } => {
            let d = RawDataset::open(&input)?;
            let rows: Vec<usize> = (0..d.len())
                .filter(|&i| classes.contains(&d.target[i]))
                .collect();
            if rows.is_empty() {
                anyhow::bail!(
                    "{}: no example has a class in {classes:?} (classes present: {:?})",
                    input.display(),
                    d.class_counts().keys().collect::<Vec<_>>()
                );
            }
            let mut s = d.select(&rows);
            if relabel {
                for t in &mut s.target {
                    *t = classes.iter().position(|c| c == t).expect("kept class") as i64;
                }
            }
            let cl = classes
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",");
            write(
                &s,
                &output,
                &[&input],
                &[("classes", cl), ("relabel", relabel.to_string())],
            )?;
        }
        DataCommand::Permute {
            input,
            seed,
            output,
        } => {
            let (p, _) = RawDataset::open(&input)?.permuted(seed);
            write(
                &p,
                &output,
                &[&input],
                &[("permutation_seed", seed.to_string())],
            )?;
        }
        DataCommand::Shuffle {
            input,
            seed,
            output,
        } => {
            let s = RawDataset::open(&input)?.shuffled(seed);
            write(
                &s,
                &output,
                &[&input],
                &[("shuffle_seed", seed.to_string())],
            )?;
        }
        DataCommand::Take {
            input,
            n,
            skip,
            output,
        } => {
            let d = RawDataset::open(&input)?;
            if skip + n > d.len() {
                anyhow::bail!(
                    "{}: has {} examples; cannot take {n} after skipping {skip}",
                    input.display(),
                    d.len()
                );
            }
            let rows: Vec<usize> = (skip..skip + n).collect();
            write(&d.select(&rows), &output, &[&input], &[])?;
        }
        DataCommand::Concat { inputs, output } => {
            let mut it = inputs.iter();
            let mut d = RawDataset::open(it.next().expect("clap: two or more"))?;
            for p in it {
                d = d.concat(&RawDataset::open(p)?)?;
            }
            let refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
            write(&d, &output, &refs, &[])?;
        }
        DataCommand::Stats { input } => {
            let d = mnemo::data::Dataset::open(&input)?;
            let raw = RawDataset::open(&input)?;
            let (lo, hi) = d
                .inputs
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let counts: serde_json::Map<String, serde_json::Value> = raw
                .class_counts()
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            JsonLines::stdout().emit(&json!({
                "path": input.display().to_string(), "examples": d.len(),
                "dtype": raw.dtype.to_string(), "example_shape": raw.example_shape,
                "classes": counts,
                // As the model sees it (U8 scaled by 1/255).
                "min": lo, "max": hi,
            }))?;
        }
    }
    Ok(Status::Success)
}
