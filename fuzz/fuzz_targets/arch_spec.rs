//! The arch-spec parser: `ArchSpec::parse` on `mlp:` shorthands and inline JSON (never a
//! file name: other text goes to `ArchSpec::from_json`). Whatever parses must give its
//! parameter manifest and count without a panic or overflow, and survive the round trip
//! through the canonical JSON stored in `mnemo.arch`.
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::arch_spec(data));
