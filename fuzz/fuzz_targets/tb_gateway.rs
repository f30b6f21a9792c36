//! ThingsBoard gateway API payloads: fluxgate_model::thingsboard::gateway.
//! The checks: `fluxgate_fuzz::tb_gateway`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fluxgate_fuzz::tb_gateway(data));
