//! `mnemo drift`'s JSON Lines field extraction. Input: a first line that is the field's
//! dotted path (first byte odd: a binary detector), then the record. The fast extractor
//! over raw bytes (`line_value`, used by --events-only and -q) and the full parse
//! (`record_value`, used when records are written back) must agree: both find the same
//! number, or both refuse the record.
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::jsonl_field(data));
