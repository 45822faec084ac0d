//! The safetensors reader: `checkpoint::validate` (our header checks, then the official
//! crate's) on arbitrary bytes. Whatever it accepts must be safe to use as
//! `SafetensorsFile` uses it: every tensor's byte range inside the data section, sizes
//! matching dtype × shape, and every tensor decodable.
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::safetensors(data));
