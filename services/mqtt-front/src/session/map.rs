//! Who is connected to this front ([`SessionMap`]), and the queue to each session task.

use super::*;

/// A connected device, as the other threads see it.
///
/// The queue is a `futures-channel` one: its allocation is small and made per message,
/// where tokio's bounded channel allocates a 32-slot block per connection up front. Its
/// single sender sits behind a mutex because every clone of a sender adds a slot.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) conn: u64,
    tx: Arc<Mutex<mpsc::Sender<ToSession>>>,
    close: Arc<CloseSignal>,
    /// The connection has custom subscriptions (set by its session task, under the map's
    /// lock: [`SessionMap::set_custom`]).
    custom: bool,
    pub(crate) reached: Reached,
    /// What the connection authenticated with (checked again on registry changes).
    pub(crate) credential: Credential,
}

/// Why a message was not queued for a connection.
#[derive(Debug)]
pub(crate) enum NotQueued {
    /// The connection's queue is full.
    Full(ToSession),
    /// The connection is gone.
    Gone,
}

impl Entry {
    pub(crate) fn new(
        conn: u64,
        tx: mpsc::Sender<ToSession>,
        close: Arc<CloseSignal>,
        reached: Reached,
        credential: Credential,
    ) -> Self {
        Entry {
            conn,
            tx: Arc::new(Mutex::new(tx)),
            close,
            custom: false,
            reached,
            credential,
        }
    }

    /// Queues `msg` for the connection without waiting.
    pub(crate) fn try_send(&self, msg: ToSession) -> Result<(), NotQueued> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.try_send(msg).map_err(|e| {
            if e.is_full() {
                NotQueued::Full(e.into_inner())
            } else {
                NotQueued::Gone
            }
        })
    }
}

impl Entry {
    /// Asks the connection to close; what is queued for it before is still written.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.close.request(reason);
    }
}

/// The next message of a queue to a session task (`None`: every sender is gone).
pub(crate) async fn next<S: futures_core::Stream + Unpin>(rx: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *rx).poll_next(cx)).await
}

/// Who is connected to this front, by (tenant, device).
#[derive(Debug, Default)]
pub(crate) struct SessionMap {
    inner: Mutex<HashMap<(TenantId, DeviceId), Entry>>,
    /// Notified when the last connection is removed.
    emptied: Notify,
}

impl SessionMap {
    fn lock(&self) -> MutexGuard<'_, HashMap<(TenantId, DeviceId), Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // operation is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection, returning the one it takes over.
    pub(crate) fn insert(&self, key: (TenantId, DeviceId), entry: Entry) -> Option<Entry> {
        self.lock().insert(key, entry)
    }

    /// Removes `conn`'s registration; `false` if another connection took over since.
    pub(crate) fn remove(&self, key: &(TenantId, DeviceId), conn: u64) -> bool {
        let mut map = self.lock();
        if map.get(key).is_some_and(|e| e.conn == conn) {
            map.remove(key);
            if map.is_empty() {
                self.emptied.notify_waiters();
            }
            true
        } else {
            false
        }
    }

    /// The connection holding `device`.
    pub(crate) fn get(&self, tenant: &TenantId, device: &DeviceId) -> Option<Entry> {
        self.lock().get(&(tenant.clone(), device.clone())).cloned()
    }

    /// Records whether `conn` (still registered as `key`) has custom subscriptions.
    pub(crate) fn set_custom(&self, key: &(TenantId, DeviceId), conn: u64, custom: bool) {
        if let Some(e) = self.lock().get_mut(key).filter(|e| e.conn == conn) {
            e.custom = custom;
        }
    }

    /// Connections of `tenant` with custom subscriptions.
    pub(crate) fn custom_subscribers(&self, tenant: &TenantId) -> Vec<Entry> {
        self.lock()
            .iter()
            .filter(|((t, _), e)| t == tenant && e.custom)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The connections whose credential `change` may have made invalid, with their
    /// (tenant, device).
    pub(crate) fn touched_by(&self, change: &RegistryChange) -> Vec<((TenantId, DeviceId), Entry)> {
        self.lock()
            .iter()
            .filter(|((t, d), e)| e.credential.touched_by(change, t, d))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Every connection.
    pub(crate) fn all(&self) -> Vec<Entry> {
        self.lock().values().cloned().collect()
    }

    /// How many connections are registered.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Resolves once no connection is registered.
    pub(crate) async fn empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            let mut emptied = std::pin::pin!(emptied);
            emptied.as_mut().enable();
            if self.lock().is_empty() {
                return;
            }
            emptied.await;
        }
    }
}
