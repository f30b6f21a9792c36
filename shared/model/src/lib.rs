//! `fluxgate-model`: the canonical envelope and the two device dialects fluxgate speaks.
//!
//! Pure code, no I/O: every function here is deterministic given its inputs (receive time,
//! message ids and limits are passed in), total (bad input is a [`Reject`], never a panic)
//! and fast enough to sit on the MQTT front's hot path.
//!
//! The flow through this crate on the front:
//!
//! ```text
//! CONNECT ──> Principal
//! PUBLISH topic ──classify_publish──> PublishClass { target, check }
//!                  check passed (registry) ──normalize(payload)──> Vec<Envelope> ──> bus
//! SUBSCRIBE filter ──classify_subscribe──> SubscribeClass
//! bus ──> Delivery ──render──> (topic, payload) ──> PUBLISH to the client
//! ```
//!
//! - [`envelope`]: the canonical [`Envelope`] every inbound message becomes.
//! - [`losant`], [`thingsboard::device`], [`thingsboard::gateway`]: exact wire formats.
//! - [`topic`]: who may publish/subscribe what, per dialect and principal.
//! - [`delivery`]: commands, RPC and attribute answers going to devices.
//! - [`device`]: devices, access keys and who may act for whom (peripheral policy, key
//!   scope); [`lifecycle`]: a command's statuses and their moves.
//! - [`reject`]: typed rejections with stable reason codes.

pub mod backoff;
pub mod delivery;
pub mod device;
pub mod envelope;
pub mod ids;
pub mod keyed;
pub mod lifecycle;
pub mod limits;
pub mod losant;
pub mod normalize;
pub mod registry;
pub mod reject;
pub mod thingsboard;
pub mod timestamp;
pub mod topic;
pub mod value;

pub use backoff::Backoff;
pub use delivery::{Delivery, Outbound, RenderError, Rendered};
pub use device::{AccessKey, Device, DeviceKind, KeyScope, PeripheralPolicy};
pub use envelope::{
    AttributeReplyShape, Body, Channel, Command, DeviceRef, Dialect, ENVELOPE_VERSION, Envelope,
    EnvelopeError, KeySelection, Kind, Sample, SessionInfo, device_key,
};
pub use ids::{CorrelationId, DeviceId, DeviceName, IdError, MessageId, TenantId};
pub use keyed::{CommandEnded, Keyed};
pub use lifecycle::{CommandStatus, WRITTEN_AT_MOST_ONCE};
pub use limits::Limits;
pub use normalize::{Ingress, normalize};
pub use registry::RegistryChange;
pub use reject::{ReasonCode, Reject, RejectInfo, Rejection, bounded};
pub use timestamp::TimeWindow;
pub use topic::{
    Check, Principal, PublishClass, PublishOp, PublishTarget, SubscribeClass, SubscribeTarget,
    Subscription, classify_publish, classify_subscribe,
};
pub use value::{Value, Values};
