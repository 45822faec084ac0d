//! `mnemo data import npz`: the .npz (zip of .npy members, stored or deflated) reader on an
//! arbitrary archive, arrays chosen by default (x and y, or the only two).
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::import_npz(data));
