//! Registry change decode (fluxgate.registry.changes).
//! The checks: `fluxgate_fuzz::registry_change`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fluxgate_fuzz::registry_change(data));
