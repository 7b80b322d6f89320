//! Fuzz target: the HTTP API's request bodies, decoded and checked as their handlers do.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalbus::fuzz::http_body(data));
