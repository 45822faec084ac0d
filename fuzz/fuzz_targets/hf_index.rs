//! The HF sharded-checkpoint index reader: `checkpoint::parse_index` on arbitrary text
//! and, when it accepts, `Checkpoint::open` of that index in a folder holding two real
//! shards (`a.safetensors`: tensors `w`, `b`; `b.safetensors`: tensor `v`). Whatever opens
//! must give every tensor's bytes and values without a panic, and shard paths must stay
//! inside the folder.
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::hf_index(data));
