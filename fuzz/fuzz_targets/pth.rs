//! `mnemo convert`'s `torch.save` reader (zip and legacy formats, the pickle allow-list):
//! what opens gives every tensor within its byte budget, without a panic.
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::pth(data));
