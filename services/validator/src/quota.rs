//! Quotas on the devices gateways create by naming them: a device a ThingsBoard gateway
//! names for the first time is created only while its application has fewer than
//! `max_devices_per_application` devices and the gateway fewer than
//! `max_devices_per_gateway` devices bound to it (a device the gateway created is bound
//! to it, as is a peripheral restricted to it). Over quota, the message is rejected
//! (`quota_exceeded`) and counted with the other rejections.
//!
//! The counts are read from the registry (every device of the application, page by page)
//! at most once per [`RECOUNT`] per application, and grown with each device this
//! validator creates. Validators count independently: together they may overshoot a
//! quota by the devices the others created within one [`RECOUNT`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fluxgate_model::{DeviceId, DeviceName, Reject, TenantId};
use fluxgate_store::{PeripheralPolicy, RegistryStore, StoreError};

/// How long an application's counts are trusted before they are read again.
const RECOUNT: Duration = Duration::from_secs(30);

/// Devices read from the registry per request while counting.
const PAGE: u32 = 1000;

/// The devices of one application, as last counted.
#[derive(Debug, Default)]
struct Counts {
    /// Every device of the application.
    devices: u64,
    /// Devices bound to each gateway (peripherals restricted to it).
    per_gateway: HashMap<DeviceId, u64>,
}

/// The auto-create quotas of one validator, with its counts.
#[derive(Debug)]
pub struct Quotas {
    per_application: u64,
    per_gateway: u64,
    counts: Mutex<HashMap<TenantId, (Instant, Counts)>>,
}

impl Quotas {
    /// Quotas of `per_application` and `per_gateway` devices (0: none).
    pub fn new(per_application: u64, per_gateway: u64) -> Self {
        Quotas {
            per_application,
            per_gateway,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, (Instant, Counts)>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why `gateway` may not create `name` in `tenant` now, if it may not.
    pub async fn check(
        &self,
        store: &dyn RegistryStore,
        tenant: &TenantId,
        gateway: Option<&DeviceId>,
        name: &DeviceName,
    ) -> Result<Option<Reject>, StoreError> {
        if self.per_application == 0 && self.per_gateway == 0 {
            return Ok(None);
        }
        let fresh = self
            .lock()
            .get(tenant)
            .is_some_and(|(at, _)| at.elapsed() < RECOUNT);
        if !fresh {
            let counted = count(store, tenant).await?;
            self.lock()
                .insert(tenant.clone(), (Instant::now(), counted));
        }
        let counts = self.lock();
        let Some((_, c)) = counts.get(tenant) else {
            return Ok(None);
        };
        let over = |what: String, count: u64, limit: u64| {
            (limit > 0 && count >= limit).then(|| Reject::QuotaExceeded {
                device: name.to_string(),
                what,
                count,
                limit,
            })
        };
        let gw = gateway.and_then(|g| {
            let n = c.per_gateway.get(g).copied().unwrap_or(0);
            over(format!("gateway {g}"), n, self.per_gateway)
        });
        Ok(over(
            format!("application {tenant}"),
            c.devices,
            self.per_application,
        )
        .or(gw))
    }

    /// This validator created a device in `tenant`, bound to `gateway`.
    pub fn created(&self, tenant: &TenantId, gateway: Option<&DeviceId>) {
        if let Some((_, c)) = self.lock().get_mut(tenant) {
            c.devices += 1;
            if let Some(g) = gateway {
                *c.per_gateway.entry(g.clone()).or_insert(0) += 1;
            }
        }
    }
}

/// Counts `tenant`'s devices, and those bound to each gateway.
async fn count(store: &dyn RegistryStore, tenant: &TenantId) -> Result<Counts, StoreError> {
    let mut counts = Counts::default();
    let mut after = None;
    loop {
        let page = store.devices(tenant.clone(), after.clone(), PAGE).await?;
        for d in &page {
            counts.devices += 1;
            if let Some(PeripheralPolicy::SpecificGateway(g)) = &d.peripheral_policy {
                *counts.per_gateway.entry(g.clone()).or_insert(0) += 1;
            }
        }
        match page.last() {
            Some(last) if page.len() as u32 == PAGE => after = Some(last.id.clone()),
            _ => return Ok(counts),
        }
    }
}
