//! `mnemo data import text`: documents tokenized with a Hugging Face `tokenizer.json` into a
//! token dataset for causal language models (`input`, `target`, `attention_mask`), packed as
//! transformers' `run_clm.py` packs them or one padded row per document. The engine is
//! `mnemo::data::text`; this file maps the flags onto it and writes the file.

use super::{is_stream, Global, JsonLines};
use anyhow::Context;
use mnemo::data::text::{self, Documents, Packing, TextInput, TextTokenizer};
use mnemo::MnemoError;
use serde_json::json;
use std::path::{Path, PathBuf};

/// How a text file is cut into documents (datasets' `load_dataset("text", sample_by=...)`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleBy {
    /// The whole file is one document.
    Document,
    /// Each line is one document.
    Line,
    /// Text between blank lines ("\n\n") is one document.
    Paragraph,
}

/// Text documents tokenized into a causal-LM dataset: input/target I64 [N,T], attention_mask U8.
///
/// Each document is encoded by the tokenizer (its post-processor's special tokens included, as
/// Hugging Face's tokenizer(text) does; special tokens written in the text, such as
/// <|endoftext|>, are read as those tokens; the file's own truncation and padding are not
/// applied), followed by the EOS token unless its ids already end with it. By default the documents' ids
/// are concatenated and cut into rows of --seq-len tokens, the remainder dropped, as
/// transformers' run_clm.py `group_texts` does (over all documents at once, not per map batch
/// of 1000); --keep-remainder pads a last row instead; --no-pack makes one row per document,
/// cut after T tokens and right-padded.
///
/// `target` holds Hugging Face's labels, not shifted (the model predicts position t from the
/// positions before it): the input id where the position counts, -100 at padding;
/// `attention_mask` is 1 for real tokens, 0 for padding. Text files are read as Python reads
/// text (UTF-8, CRLF and CR read as LF), one document per file unless --sample-by says
/// otherwise; empty documents are skipped. The metadata records the tokenizer's blake3, the
/// vocabulary size (largest id + 1), the pad and EOS ids, T, the packing and the counts
/// (mnemo.tokens.*). Zero rows is an error (exit 2); nothing is written then.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Text files (each one document by default), or JSON Lines with --jsonl; - reads stdin.
    #[arg(required = true, value_name = "FILE")]
    pub inputs: Vec<PathBuf>,
    /// A Hugging Face tokenizer.json (as tokenizer.save() or save_pretrained() writes it).
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: PathBuf,
    /// Tokens per row (run_clm.py's block_size), 1 to 1048576.
    #[arg(long, value_name = "T", value_parser = mnemo::validate::seq_len)]
    pub seq_len: usize,
    /// Documents of a text file: the whole file, each line, or each paragraph (split at
    /// "\n\n"), as datasets' load_dataset("text", sample_by=...).
    #[arg(long, value_enum, default_value_t = SampleBy::Document, conflicts_with = "jsonl")]
    pub sample_by: SampleBy,
    /// Read the inputs as JSON Lines: one document per line, the string under FIELD (a
    /// top-level key); blank lines are skipped.
    #[arg(long, value_name = "FIELD")]
    pub jsonl: Option<String>,
    /// One row per document (cut after T tokens, right-padded) instead of packing.
    #[arg(long)]
    pub no_pack: bool,
    /// Pad the last, short row of the packed tokens instead of dropping it.
    #[arg(long, conflicts_with = "no_pack")]
    pub keep_remainder: bool,
    /// The token appended to each document. Default: the tokenizer's </s>, <|endoftext|> or
    /// <|end_of_text|>, the first it has (none: a warning, and no EOS).
    #[arg(long, value_name = "TOKEN", conflicts_with = "no_eos")]
    pub eos: Option<String>,
    /// Append no EOS token.
    #[arg(long)]
    pub no_eos: bool,
    /// The token at padded positions (masked out anyway: -100 in target, 0 in
    /// attention_mask). Default: the tokenizer.json's padding pad id, else its <pad> or [PAD],
    /// else the EOS token's id, else 0.
    #[arg(long, value_name = "TOKEN")]
    pub pad: Option<String>,
    /// Encode without the post-processor's special tokens (add_special_tokens=False: no BOS
    /// of a Llama template, no [CLS]/[SEP]).
    #[arg(long)]
    pub no_special_tokens: bool,
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
}

/// The name stdin gets in messages and in the provenance.
const STDIN: &str = "<stdin>";

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let mut d = mnemo::fsutil::Destinations::new();
    d.input("--tokenizer", &args.tokenizer);
    let mut streams = 0;
    for i in &args.inputs {
        if is_stream(i) {
            streams += 1;
        } else {
            d.input("the input", i);
        }
    }
    if streams > 1 {
        anyhow::bail!("- (stdin) is given {streams} times; it can be read once");
    }
    d.output("-o", &args.output);
    d.check()?;

    let tok = TextTokenizer::open(&args.tokenizer)?;
    let tok_name = args.tokenizer.display();
    // The EOS token: named, or found by its default names.
    let eos_known = match &args.eos {
        Some(t) => Some(tok.require("--eos", t)?),
        None => tok.default_eos().map(|(_, id)| id),
    };
    let eos = if args.no_eos { None } else { eos_known };
    if eos.is_none() && !args.no_eos {
        g.say(format!(
            "mnemo: {tok_name} has none of the EOS tokens {}: {} (name one with --eos TOKEN, \
             or pass --no-eos)",
            text::DEFAULT_EOS.join(" "),
            if args.no_pack {
                "documents end without one"
            } else {
                "documents are joined without one"
            }
        ));
    }
    let pad = match &args.pad {
        Some(t) => tok.require("--pad", t)?,
        None => tok.default_pad(eos_known),
    };
    let how = match &args.jsonl {
        Some(f) => Documents::Jsonl(f.clone()),
        None => match args.sample_by {
            SampleBy::Document => Documents::Document,
            SampleBy::Line => Documents::Line,
            SampleBy::Paragraph => Documents::Paragraph,
        },
    };
    let packing = if args.no_pack {
        Packing::Pad
    } else {
        Packing::Pack {
            keep_remainder: args.keep_remainder,
        }
    };

    let mut prov = g.provenance();
    prov.input(
        args.tokenizer.display().to_string(),
        format!("blake3:{}", tok.blake3),
    );
    let mut ids = Vec::new();
    for path in &args.inputs {
        let input = if is_stream(path) {
            let stdin = std::io::stdin().lock();
            TextInput::from_reader(Path::new(STDIN), stdin)?
        } else {
            TextInput::read(path)?
        };
        prov.input(input.label.display().to_string(), input.hash());
        let docs = text::documents(&input, &how)?;
        drop(input);
        ids.extend(tok.encode(&path_label(path), &docs, !args.no_special_tokens, eos)?);
    }
    let documents = ids.len();
    if documents == 0 {
        return Err(MnemoError::NoData {
            reason: format!(
                "no documents: {} {} no text{}; nothing was written",
                names(&args.inputs),
                if args.inputs.len() == 1 {
                    "holds"
                } else {
                    "hold"
                },
                match &args.jsonl {
                    Some(f) => format!(" under \"{f}\""),
                    None => String::new(),
                }
            ),
        }
        .into());
    }
    let r = text::rows(&ids, args.seq_len, packing, pad)?;
    drop(ids);
    if r.rows == 0 {
        return Err(MnemoError::NoData {
            reason: format!(
                "{documents} document(s) give {} tokens, fewer than one row of --seq-len {}: \
                 no rows, nothing was written (--keep-remainder pads a last row; or lower --seq-len)",
                r.total, args.seq_len
            ),
        }
        .into());
    }

    let mut meta = prov.metadata();
    let mut put = |k: &str, v: String| {
        meta.insert(format!("mnemo.tokens.{k}"), v);
    };
    put("tokenizer_blake3", tok.blake3.clone());
    put("vocab_size", tok.vocab_size.to_string());
    put("pad_id", pad.to_string());
    if let Some(e) = eos {
        put("eos_id", e.to_string());
    }
    put("seq_len", args.seq_len.to_string());
    put("packing", packing.name().to_string());
    put("special_tokens", (!args.no_special_tokens).to_string());
    put("documents", documents.to_string());
    put("tokens", r.kept.to_string());
    put("dropped", r.dropped().to_string());

    let (rows, total, kept, dropped) = (r.rows, r.total, r.kept, r.dropped());
    mnemo::checkpoint::write_checkpoint(&args.output, r.into_tensors(), &meta)
        .with_context(|| format!("writing {}", args.output.display()))?;
    g.say(format!(
        "mnemo: {documents} document(s), {total} tokens -> {rows} rows of {} ({kept} tokens), \
         {dropped} tokens dropped{}",
        args.seq_len,
        match packing {
            Packing::Pack {
                keep_remainder: false,
            } if dropped > 0 => " (the remainder; --keep-remainder pads it)",
            Packing::Pad if dropped > 0 => " (cut by --seq-len)",
            _ => "",
        }
    ));
    JsonLines::stdout().emit(&json!({
        "output": args.output.display().to_string(), "examples": rows, "seq_len": args.seq_len,
        "packing": packing.name(), "documents": documents, "tokens": kept, "dropped": dropped,
        "vocab_size": tok.vocab_size, "pad_id": pad, "eos_id": eos,
    }))
}

fn path_label(p: &Path) -> PathBuf {
    if is_stream(p) {
        PathBuf::from(STDIN)
    } else {
        p.to_path_buf()
    }
}

fn names(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths
        .iter()
        .take(3)
        .map(|p| path_label(p).display().to_string())
        .collect();
    let more = paths.len().saturating_sub(3);
    if more > 0 {
        format!("{} and {more} more", v.join(", "))
    } else {
        v.join(", ")
    }
}
