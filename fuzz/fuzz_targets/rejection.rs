//! Rejected-log decode, the rejection of an undecodable record's key, and command-outcome keys.
//! The checks: `fluxgate_fuzz::rejection`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fluxgate_fuzz::rejection(data));
