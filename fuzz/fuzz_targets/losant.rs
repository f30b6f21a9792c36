//! Losant state (MQTT and REST forms) and commands: fluxgate_model::losant.
//! The checks: `fluxgate_fuzz::losant`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fluxgate_fuzz::losant(data));
