//! Fuzz target: the config file `metalbus serve --config` reads, parsed and checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalbus::fuzz::config_file(data));
