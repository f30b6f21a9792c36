//! ThingsBoard device API payloads: fluxgate_model::thingsboard::device.
//! The checks: `fluxgate_fuzz::tb_device`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fluxgate_fuzz::tb_device(data));
