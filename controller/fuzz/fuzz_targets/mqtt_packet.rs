//! Fuzz target: the front door's MQTT packet decoding and per-client checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalbus::fuzz::mqtt_packet(data));
