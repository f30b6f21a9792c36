//! One way to run roles, whether one (`fluxgate <role>`) or all of them (`standalone`).
//!
//! A role starts in two phases. Its first phase — building it — subscribes its consumers
//! and binds its listeners, so that what is produced from then on reaches it; a role is
//! handed to [`serve`] only after that. Its second phase, [`Role::run`], serves until its
//! stop signal and then drains. [`serve`] runs every role, waits for SIGINT/SIGTERM and
//! stops them in the reverse of the order they were given: the front and the API stop
//! taking work before the pipeline behind them drains.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

/// Resolves when the role is to stop.
pub(crate) type Stop = Pin<Box<dyn Future<Output = ()>>>;

/// What a role's second phase resolves to.
pub(crate) type Running = Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

/// A role whose first phase is done (subscribed, bound).
pub(crate) trait Role {
    /// For logs.
    fn name(&self) -> &'static str;
    /// Serves until `stop` resolves, then drains. Runs inside the actix system.
    fn run(self: Box<Self>, stop: Stop) -> Running;
}

/// How long one role may take to drain before the process stops without it.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Runs `roles` until SIGINT/SIGTERM (or until one of them fails), then stops them last
/// to first. `health` (of the roles whose readiness is the process's to say) turns ready
/// once every role runs, and unready before the first one stops.
/// `on_running` is called once every role runs and `health` is ready.
pub(crate) async fn serve(
    roles: Vec<Box<dyn Role>>,
    health: &[Arc<fluxgate_observability::Health>],
    on_running: impl FnOnce(),
) -> anyhow::Result<()> {
    let mut running = Vec::new();
    // A role that ends on its own (an error) stops the process too.
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    for role in roles {
        let (tx, rx) = oneshot::channel::<()>();
        let name = role.name();
        let stop: Stop = Box::pin(async move {
            let _ = rx.await;
        });
        let (run, ended_tx) = (role.run(stop), ended_tx.clone());
        let join = actix_rt::spawn(async move {
            let r = run.await;
            let _ = ended_tx.send(name);
            r
        });
        running.push((name, tx, join));
        tracing::info!(role = name, "running");
    }
    for h in health {
        h.set_ready(true);
    }
    on_running();
    let mut failed = None;
    tokio::select! {
        () = crate::terminated() => tracing::info!("signal received; stopping"),
        Some(name) = ended.recv() => {
            let i = running.iter().position(|(n, ..)| *n == name).unwrap_or_default();
            let (name, _, join) = running.remove(i);
            let why = match join.await {
                Ok(Ok(())) => anyhow::anyhow!("{name} stopped on its own"),
                Ok(Err(e)) => e.context(format!("{name} failed")),
                Err(e) => anyhow::anyhow!("{name} panicked: {e}"),
            };
            tracing::error!(error = %format!("{why:#}"), "a role ended; stopping the others");
            failed = Some(why);
        }
    }
    for h in health {
        h.set_ready(false);
    }
    while let Some((name, stop, join)) = running.pop() {
        let _ = stop.send(());
        match tokio::time::timeout(DRAIN_LIMIT, join).await {
            Ok(Ok(Ok(()))) => tracing::info!(role = name, "stopped"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(role = name, error = %format!("{e:#}"), "stopped with an error")
            }
            Ok(Err(e)) => tracing::warn!(role = name, error = %e, "panicked while stopping"),
            Err(_) => tracing::warn!(role = name, "did not stop in {DRAIN_LIMIT:?}"),
        }
    }
    failed.map_or(Ok(()), Err)
}

/// A pipeline role (validator, writer, dispatcher): its prepared second phase.
pub(crate) struct Pipeline<F> {
    name: &'static str,
    run: F,
}

impl<F, Fut> Pipeline<F>
where
    F: FnOnce(Stop) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    pub(crate) fn new(name: &'static str, run: F) -> Box<Self> {
        Box::new(Pipeline { name, run })
    }
}

impl<F, Fut> Role for Pipeline<F>
where
    F: FnOnce(Stop) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(self: Box<Self>, stop: Stop) -> Running {
        let fut = (self.run)(stop);
        Box::pin(async move {
            fut.await;
            Ok(())
        })
    }
}

/// The MQTT front, listening.
pub(crate) struct Front(pub(crate) fluxgate_mqtt_front::RunningFront);

impl Role for Front {
    fn name(&self) -> &'static str {
        "front"
    }

    fn run(self: Box<Self>, stop: Stop) -> Running {
        Box::pin(async move {
            stop.await;
            self.0.shutdown().await;
            Ok(())
        })
    }
}

/// The HTTP API, bound.
pub(crate) struct Api(pub(crate) fluxgate_api::RunningApi);

impl Role for Api {
    fn name(&self) -> &'static str {
        "api"
    }

    fn run(self: Box<Self>, stop: Stop) -> Running {
        let handle = self.0.server.handle();
        let server = actix_rt::spawn(self.0.server);
        Box::pin(async move {
            stop.await;
            handle.stop(true).await;
            server.await?.map_err(anyhow::Error::from)
        })
    }
}
