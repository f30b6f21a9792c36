//! The property: anything the MQTT front accepts, the pipeline decodes.
//! The checks: `fluxgate_fuzz::front_accepts_pipeline_decodes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fluxgate_fuzz::front_accepts_pipeline_decodes(data));
