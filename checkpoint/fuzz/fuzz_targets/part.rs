//! State parts, ledger entries and write-ahead objects (framed bincode) and their
//! verification: see `weir_fuzz::part`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::part(data));
