//! `fluxgate-ts-writer`: moves what the pipeline accepted into the store.
//!
//! ```text
//! fluxgate.ingest.valid    ─┬─> TsWriter ─────┬─ write_samples / put_attributes
//! fluxgate.ingest.rejected ─┘   (batch)       └─ log_rejected      ──> ack (commit)
//! ```
//!
//! One [`TsWriter`] stage (run by the `fluxgate_pipeline` actor, which fetches, supervises
//! and drains) owns one consumer (one group member; scale by running more
//! instances in the group). It reads records into a batch and flushes the batch when it
//! holds [`WriterConfig::batch_max_points`] points or is
//! [`WriterConfig::batch_max_age_ms`] old. A flush writes everything the batch holds,
//! retrying with exponential backoff for as long as the store fails — the consumer is
//! paused meanwhile, nothing is dropped — and only then acks the batch's records, so an
//! offset is never committed past an unwritten record. Writes are idempotent, so a record
//! redelivered after a crash is written again harmlessly. The connection log is not
//! here: the dispatcher, which owns presence, writes it.

mod config;
mod writer;

pub use config::WriterConfig;
pub use writer::{Prepared, TsWriter, WriterStats, WriterStore, prepare};
