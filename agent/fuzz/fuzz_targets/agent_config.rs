//! Fuzz target: the agent's config file, parsed and checked as `metalbus-agent run` does.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalbus_agent::fuzz::config_file(data));
