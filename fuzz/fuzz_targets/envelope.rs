//! The canonical envelope decode (Envelope::from_bytes), as the validator, writer and dispatcher call it.
//! The checks: `fluxgate_fuzz::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fluxgate_fuzz::envelope(data));
