//! The registry cache over SQLite: hits, misses, invalidation, writes through it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use fluxgate_model::{DeviceId, DeviceName, RegistryChange, TenantId};
use fluxgate_store::sqlite::SqliteStore;
use fluxgate_store::*;

fn device(id: &str, name: &str) -> Device {
    Device {
        tenant: TenantId::new("t").unwrap(),
        id: DeviceId::new(id).unwrap(),
        name: name.into(),
        kind: DeviceKind::Standalone,
        peripheral_policy: None,
        tags: vec![],
        profile: None,
        created_ms: 0,
        updated_ms: 0,
    }
}

#[tokio::test]
async fn cached_reads_change_only_on_invalidation_or_write_through() {
    let inner: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    inner.migrate().await.unwrap();
    let cache = CachedStore::new(inner.clone(), Duration::from_secs(3600), 1000);
    let (t, d) = (TenantId::new("t").unwrap(), DeviceId::new("d1").unwrap());

    // A miss is cached: a device created behind the cache's back stays unseen...
    assert_eq!(cache.device(t.clone(), d.clone()).await.unwrap(), None);
    inner.put_device(device("d1", "one")).await.unwrap();
    assert_eq!(cache.device(t.clone(), d.clone()).await.unwrap(), None);
    // ...until its registry change arrives.
    let change = RegistryChange::Device {
        tenant: t.clone(),
        device: d.clone(),
    };
    cache.invalidate(&change).await;
    assert_eq!(
        cache
            .device(t.clone(), d.clone())
            .await
            .unwrap()
            .unwrap()
            .name,
        "one"
    );
    // Writes through the cache are visible at once.
    cache.put_device(device("d1", "uno")).await.unwrap();
    assert_eq!(
        cache
            .device(t.clone(), d.clone())
            .await
            .unwrap()
            .unwrap()
            .name,
        "uno"
    );

    // Attribute definitions and access keys follow the same rules.
    assert!(
        cache
            .attribute_defs(t.clone(), d.clone())
            .await
            .unwrap()
            .is_empty()
    );
    let defs = vec![AttributeDef {
        name: "temp".into(),
        kind: AttributeType::Number,
    }];
    inner
        .put_attribute_defs(t.clone(), d.clone(), defs.clone())
        .await
        .unwrap();
    assert!(
        cache
            .attribute_defs(t.clone(), d.clone())
            .await
            .unwrap()
            .is_empty()
    );
    cache
        .invalidate(&RegistryChange::AttributeDefs {
            tenant: t.clone(),
            device: d.clone(),
        })
        .await;
    assert_eq!(
        cache.attribute_defs(t.clone(), d.clone()).await.unwrap(),
        defs
    );

    // A ThingsBoard name resolves once; the mapping is then served from memory.
    let n = DeviceName::new("Sensor A").unwrap();
    let first = cache
        .device_by_name(t.clone(), n.clone(), auto("p"))
        .await
        .unwrap();
    assert!(first.created);
    let again = cache
        .device_by_name(t.clone(), n.clone(), auto("p"))
        .await
        .unwrap();
    assert_eq!((again.device.id, again.created), (first.device.id, false));
}

fn auto(profile: &str) -> fluxgate_store::AutoCreate {
    fluxgate_store::AutoCreate {
        profile: profile.into(),
        gateway: None,
        now_ms: 0,
    }
}
