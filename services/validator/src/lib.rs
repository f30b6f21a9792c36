//! `fluxgate-validator`: every raw envelope checked against the registry.
//!
//! ```text
//! fluxgate.ingest.raw ─> Validator ─┬─> fluxgate.ingest.valid     telemetry, client attributes
//!                                   ├─> fluxgate.device.events    connect/disconnect of devices behind a gateway,
//!                                   │                             RPC, attribute requests, claims (on the device's key)
//!                                   └─> fluxgate.ingest.rejected  what cannot be stored, with its reason
//! ```
//!
//! [`validate`] is the decision (store reads only, no bus); [`Validator`] is the stage
//! that runs it per record (in the `fluxgate_pipeline` actor, which fetches, supervises
//! and drains), produces the outcome, and acks the raw record only when every output is
//! acknowledged (at-least-once; outputs are idempotent downstream).
//!
//! Registry reads go through `fluxgate_store::CachedStore`, invalidated from
//! `fluxgate.registry.changes`.
//!
//! Which devices a gateway may report for, whatever dialect it speaks: peripherals whose
//! policy allows it (any gateway, or this one). A device a ThingsBoard gateway names for
//! the first time is created as a peripheral of that gateway alone, within the
//! auto-create quotas ([`Quotas`]); a device provisioned through the API is reachable
//! through gateways only if it is a peripheral that allows them (`kind: peripheral`,
//! `peripheral_policy: any_gateway` or `specific_gateway`). Anything else is rejected
//! (`peripheral_not_allowed`), as is a Losant gateway's publish for it.

mod actor;
mod config;
mod quota;
mod validate;

pub use actor::{MAX_IN_FLIGHT, Prepared, Validator, ValidatorStats, prepare};
pub use config::ValidatorConfig;
pub use quota::Quotas;
pub use validate::{Output, validate};
