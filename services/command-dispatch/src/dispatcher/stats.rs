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
        let def = |name, help, labels: &[(&'static str, &'static str)], value: &Arc<AtomicU64>| {
            CounterDef {
                name,
                help,
                labels: labels.to_vec(),
                value: value.clone(),
            }
        };
        fluxgate_observability::CounterSet::new(vec![
            def(
                "fluxgate_command_dispatch_deliveries_total",
                "Deliveries produced.",
                &[],
                &self.deliveries,
            ),
            def(
                "fluxgate_command_dispatch_failed_total",
                "Commands that ended failed, timed out or expired.",
                &[],
                &self.failed,
            ),
            def(
                "fluxgate_command_dispatch_client_rpcs_total",
                "Client-side RPC requests of devices, stored for an application to answer.",
                &[],
                &self.client_rpcs,
            ),
            def(
                "fluxgate_command_dispatch_client_rpc_answers_total",
                "Client-side RPC answers sent to their device.",
                &[],
                &self.client_rpc_answers,
            ),
            def(
                "fluxgate_command_dispatch_client_rpc_undelivered_total",
                "Client-side RPC answers not sent: the device was offline.",
                &[],
                &self.client_rpc_undelivered,
            ),
            def(
                "fluxgate_command_dispatch_client_rpc_timed_out_total",
                "Client-side RPC requests nobody answered in time; the device got an error reply.",
                &[],
                &self.client_rpc_timed_out,
            ),
            def(
                "fluxgate_command_dispatch_claim_windows_total",
                "Claiming windows devices opened (ThingsBoard claim messages).",
                &[],
                &self.claim_windows,
            ),
            def(
                "fluxgate_command_dispatch_missed_attribute_pushes_total",
                "Pushes of the shared attributes changed while a device was away, when it subscribed again.",
                &[],
                &self.missed_attribute_pushes,
            ),
            def(
                "fluxgate_command_dispatch_timers_rearmed_total",
                "Timers of commands and client-side RPCs started again from the store when partitions were assigned.",
                &[],
                &self.timers_rearmed,
            ),
        ])
        .and_then(|set| {
            set.with_gauges(vec![def(
                    "fluxgate_command_dispatch_timers",
                    "Timers running (RPC replies, delivery deadlines, client-side RPC timeouts) of the devices whose partitions this dispatcher holds.",
                    &[],
                    &self.timers,
                )])
        })
    }
}
