//! `mnemo report`'s training-log reader (loss curves) and the figure drawn from what it
//! accepts: no panic and no endless tick search on any numbers.
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::loss_curves(data));
