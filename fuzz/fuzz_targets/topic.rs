//! The topic classifier (publish and subscribe), for both dialects' devices and gateways.
//! The checks: `fluxgate_fuzz::topic`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fluxgate_fuzz::topic(data));
