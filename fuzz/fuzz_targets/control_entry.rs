#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raft_envelope_fuzz::bytes::control_entry(data));
