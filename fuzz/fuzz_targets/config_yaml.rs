#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipgate::fuzzing::config_yaml(data));
