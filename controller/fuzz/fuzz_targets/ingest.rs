//! Fuzz target: the controller's ingest decoding, with and without the node's proof.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalbus::fuzz::ingest_message(data));
