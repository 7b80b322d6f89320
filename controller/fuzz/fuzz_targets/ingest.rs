#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalbus::fuzz::ingest_message(data));
