#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipgate::fuzzing::forwarded_headers(data));
