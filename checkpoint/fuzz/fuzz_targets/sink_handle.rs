//! Sink handles and staged output names: see `weir_fuzz::sink_handle`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::sink_handle(data));
