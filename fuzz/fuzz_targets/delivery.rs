//! Delivery decode (fluxgate.deliveries) and rendering for the target client.
//! The checks: `fluxgate_fuzz::delivery`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fluxgate_fuzz::delivery(data));
