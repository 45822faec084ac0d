//! `mnemo data import idx`: the IDX reader (gzip detected by its magic) on two arbitrary
//! files. Input: flags byte (bit 0: --flatten), a 2-byte little-endian length L, then the
//! images file (L bytes) and the labels file (the rest).
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::import_idx(data));
