//! Fuzz target: commands and receipts, as a (possibly hostile) broker delivers them to an agent.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalbus_protocol::fuzz::controller_message(data));
