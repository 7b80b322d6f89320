//! Fuzz target: opening sealed payloads, and seal-then-open round trips.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalbus_protocol::fuzz::sealed(data));
