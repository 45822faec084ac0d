//! PEFT's `adapter_config.json` as `lora merge` and `lora-gate --adapter` read it: what is
//! accepted is usable (rank, finite α, dropout in [0, 1), targets by PEFT's rule) and
//! round-trips through our own writer.
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::adapter_config(data));
