//! The dispatcher's counters.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use fluxgate_pipeline::{PipelineStats, Stage};

use super::Dispatcher;

/// Counters of one dispatcher.
#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Deliveries produced.
    pub deliveries: Arc<AtomicU64>,
    /// Commands that ended failed, timed out or expired.
    pub failed: Arc<AtomicU64>,
    /// Client-side RPC requests of devices, stored for an application to answer.
    pub client_rpcs: Arc<AtomicU64>,
    /// Client-side RPC answers sent to their device.
    pub client_rpc_answers: Arc<AtomicU64>,
    /// Client-side RPC answers whose device was offline (not sent).
    pub client_rpc_undelivered: Arc<AtomicU64>,
    /// Client-side RPC requests nobody answered in time (the device got an error reply).
    pub client_rpc_timed_out: Arc<AtomicU64>,
    /// Claiming windows devices opened.
    pub claim_windows: Arc<AtomicU64>,
    /// Records read, retried store or bus failures, undecodable records kept, restarts
    /// and lag.
    pub pipeline: PipelineStats,
    /// Timers running now (RPC replies, delivery deadlines, client-side RPC timeouts),
    /// of the devices whose partitions this dispatcher holds.
    pub timers: Arc<AtomicU64>,
    /// Timers started again from the store when partitions were assigned.
    pub timers_rearmed: Arc<AtomicU64>,
    /// Pushes, at a (re)subscription, of the shared attributes changed while the device
    /// was away.
    pub missed_attribute_pushes: Arc<AtomicU64>,
}

impl DispatchStats {
    /// These counters as Prometheus collectors (register each in the role's registry).
    pub fn collectors(&self) -> prometheus::Result<Vec<Box<dyn prometheus::core::Collector>>> {
        Ok(vec![
            Box::new(self.counters()?),
            Box::new(self.pipeline.collector(Dispatcher::ROLE)?),
        ])
    }

    fn counters(&self) -> prometheus::Result<fluxgate_observability::CounterSet> {
        use fluxgate_observability::CounterDef;
        use fluxgate_observability::catalogue as c;
        let def = |metric, value: &Arc<AtomicU64>| CounterDef {
            metric,
            labels: Vec::new(),
            value: value.clone(),
        };
        fluxgate_observability::CounterSet::new(vec![
            def(&c::DISPATCH_DELIVERIES, &self.deliveries),
            def(&c::DISPATCH_FAILED, &self.failed),
            def(&c::DISPATCH_CLIENT_RPCS, &self.client_rpcs),
            def(&c::DISPATCH_CLIENT_RPC_ANSWERS, &self.client_rpc_answers),
            def(
                &c::DISPATCH_CLIENT_RPC_UNDELIVERED,
                &self.client_rpc_undelivered,
            ),
            def(
                &c::DISPATCH_CLIENT_RPC_TIMED_OUT,
                &self.client_rpc_timed_out,
            ),
            def(&c::DISPATCH_CLAIM_WINDOWS, &self.claim_windows),
            def(
                &c::DISPATCH_MISSED_ATTRIBUTE_PUSHES,
                &self.missed_attribute_pushes,
            ),
            def(&c::DISPATCH_TIMERS_REARMED, &self.timers_rearmed),
        ])?
        .with_gauges(vec![def(&c::DISPATCH_TIMERS, &self.timers)])
    }
}
