//! `mnemo data import npy`: the .npy parser on two arbitrary files (X and Y). Input: a
//! 2-byte little-endian length L, then X (L bytes) and Y (the rest).
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::import_npy(data));
