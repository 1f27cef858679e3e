//! Packed objects: their index, their sections, and a restore of keyed state from them:
//! see `weir_fuzz::packed`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::packed(data));
