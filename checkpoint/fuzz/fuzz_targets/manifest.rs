//! Manifests, links, stop requests (framed JSON) and the names of stored objects: see
//! `weir_fuzz::manifest`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::manifest(data));
