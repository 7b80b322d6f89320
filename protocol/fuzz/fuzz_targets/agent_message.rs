//! Fuzz target: status, inventory, metrics and report payloads, as an agent sends them.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalbus_protocol::fuzz::agent_message(data));
