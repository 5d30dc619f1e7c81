#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipgate::fuzzing::upstream_response(data));
