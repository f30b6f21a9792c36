//! fluxgate.toml through the loader's path (see fuzz/src/config.rs for what it covers).
//! The checks: `fluxgate_fuzz::config::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fluxgate_fuzz::config::config(data));
