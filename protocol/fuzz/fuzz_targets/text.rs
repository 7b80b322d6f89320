//! Fuzz target: timestamps, node and command ids, topics and enrollment tokens.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalbus_protocol::fuzz::text(data));
