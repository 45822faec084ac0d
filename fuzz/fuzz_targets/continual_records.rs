//! The JSON Lines reader of `mnemo check` and `mnemo report` (stage/task/metric records)
//! and the accuracy matrices built from them: no record may claim a matrix beyond
//! `MAX_TASKS`, and building and scoring never panics. Input: the --metric list on the
//! first line, then the records.
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::continual_records(data));
