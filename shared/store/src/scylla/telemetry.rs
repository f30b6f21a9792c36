//! The ScyllaDB/Cassandra adapter's device data: time-series writes, latest values and range queries; attribute values.

use futures_util::future::try_join_all;

use super::*;
use crate::TelemetryStore;

impl TelemetryStore for ScyllaStore {
    fn put_attributes(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        values: Values,
        ts_ms: i64,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            for (k, v) in &values {
                let (vt, l, f, s, b) = typed(v);
                // Write time = sample time: an older report never overwrites a newer one.
                let write_ts = cell_time(ts_ms);
                self.exec(
                    &self.stmts.put_attr,
                    (
                        tenant.as_str(),
                        device.as_str(),
                        scope.as_str(),
                        k,
                        ts_ms,
                        vt,
                        l,
                        f,
                        s,
                        b,
                        write_ts,
                    ),
                )
                .await?;
            }
            Ok(())
        })
    }

    fn attributes(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        keys: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Values>> {
        Box::pin(async move {
            let rows = self.attribute_rows(&tenant, &device, scope).await?;
            Ok(rows
                .into_iter()
                .filter(|(key, _, _)| keys.as_ref().is_none_or(|ks| ks.contains(key)))
                .map(|(key, _, v)| (key, v))
                .collect())
        })
    }

    fn attributes_since(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        since_ms: i64,
    ) -> BoxFuture<'_, Result<Values>> {
        Box::pin(async move {
            let rows = self.attribute_rows(&tenant, &device, scope).await?;
            Ok(rows
                .into_iter()
                .filter(|&(_, ts, _)| ts > since_ms)
                .map(|(key, _, v)| (key, v))
                .collect())
        })
    }

    /// Every partition of the batches (one unlogged batch per `(key, bucket)`, plus its
    /// bucket index entry) and every latest value is its own request, all run
    /// concurrently within the store's in-flight permits. Each is idempotent (a point
    /// is its key, and a latest value carries its sample time as cell timestamp), so a
    /// write retried after a partial failure overwrites what it wrote before.
    fn write_samples(&self, batches: Vec<SampleBatch>) -> BoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            let mut ttls: HashMap<&TenantId, i32> = HashMap::new();
            for b in &batches {
                if !ttls.contains_key(&b.tenant) {
                    ttls.insert(&b.tenant, self.ttl_secs(&b.tenant).await?);
                }
            }
            let mut written = 0;
            let mut partition_writes = Vec::new();
            let mut latest_writes = Vec::new();
            for b in &batches {
                let ttl = ttls[&b.tenant];
                let (t, d) = (b.tenant.as_str(), b.device.as_str());
                // Group points by partition (key, bucket): one unlogged batch per partition.
                let mut partitions: HashMap<(&str, i64), Vec<(i64, &Value)>> = HashMap::new();
                let mut newest: HashMap<&str, (i64, &Value)> = HashMap::new();
                for s in &b.samples {
                    for (k, v) in &s.values {
                        let bucket = s.ts_ms.div_euclid(self.cfg.bucket_ms);
                        partitions
                            .entry((k, bucket))
                            .or_default()
                            .push((s.ts_ms, v));
                        let slot = newest.entry(k).or_insert((s.ts_ms, v));
                        if s.ts_ms >= slot.0 {
                            *slot = (s.ts_ms, v);
                        }
                        written += 1;
                    }
                }
                for ((key, bucket), points) in partitions {
                    let values: Vec<_> = points
                        .iter()
                        .map(|(ts, v)| {
                            let (vt, l, f, s, bo) = typed(v);
                            (t, d, key, bucket, *ts, vt, l, f, s, bo, ttl)
                        })
                        .collect();
                    partition_writes.push(async move {
                        let stmts = vec![&self.stmts.put_point; values.len()];
                        self.batch(&stmts, values).await?;
                        self.exec(&self.stmts.put_bucket, (t, d, key, bucket, ttl))
                            .await
                            .map(|_| ())
                    });
                }
                for (key, (ts, v)) in newest {
                    let (vt, l, f, s, bo) = typed(v);
                    let row = (t, d, key, ts, vt, l, f, s, bo, ttl, cell_time(ts));
                    latest_writes.push(self.exec(&self.stmts.put_latest, row));
                }
            }
            try_join_all(partition_writes).await?;
            try_join_all(latest_writes).await?;
            Ok(written)
        })
    }

    fn latest(
        &self,
        tenant: TenantId,
        device: DeviceId,
        keys: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Vec<Point>>> {
        Box::pin(async move {
            type Row = (
                String,
                i64,
                i32,
                Option<i64>,
                Option<f64>,
                Option<String>,
                Option<bool>,
            );
            let r: Vec<Row> = rows(
                self.exec(&self.stmts.get_latest, (tenant.as_str(), device.as_str()))
                    .await?,
            )?;
            let mut out = Vec::new();
            for (key, ts, vt, l, f, s, b) in r {
                if keys.as_ref().is_some_and(|ks| !ks.contains(&key)) {
                    continue;
                }
                out.push(Point {
                    device: device.clone(),
                    key,
                    ts_ms: ts,
                    value: untyped((vt, l, f, s, b))?,
                });
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn query(&self, q: RangeQuery) -> BoxFuture<'_, Result<PointPage>> {
        Box::pin(async move {
            if q.limit == 0 || q.from_ms >= q.to_ms {
                return Ok(PointPage {
                    points: Vec::new(),
                    next: None,
                });
            }
            let (t, d) = (q.tenant.as_str(), q.device.as_str());
            let keys = if q.keys.is_empty() {
                // Every key: those with a latest value (every key written has one).
                let r: Vec<(String, i64)> =
                    rows(self.exec(&self.stmts.latest_keys, (t, d)).await?)?;
                r.into_iter().map(|(k, _)| k).collect()
            } else {
                q.keys.clone()
            };
            let after = match q.page_token.as_deref() {
                Some(t) => {
                    let (ts, key) = t.split_once(':').ok_or(StoreError::BadPageToken)?;
                    Some((
                        ts.parse::<i64>().map_err(|_| StoreError::BadPageToken)?,
                        key.to_owned(),
                    ))
                }
                None => None,
            };
            let want = q.limit as usize + 1;
            let (first, last) = (
                q.from_ms.div_euclid(self.cfg.bucket_ms),
                (q.to_ms - 1).div_euclid(self.cfg.bucket_ms),
            );
            // Read each key's points in order up to `want` past the token, then merge.
            let mut all: Vec<Point> = Vec::new();
            for key in &keys {
                let buckets: Vec<(i64,)> = rows(
                    self.exec(&self.stmts.buckets, (t, d, key.as_str(), first, last))
                        .await?,
                )?;
                let mut buckets: Vec<i64> = buckets.into_iter().map(|(b,)| b).collect();
                if q.order == Order::Desc {
                    buckets.reverse();
                }
                let mut got = 0;
                for bucket in buckets {
                    // Bound the window by the token where it allows.
                    let (mut from, mut to) = (q.from_ms, q.to_ms);
                    if let Some((ts, _)) = &after {
                        match q.order {
                            Order::Asc => from = from.max(*ts),
                            Order::Desc => to = to.min(ts.saturating_add(1)),
                        }
                    }
                    let name = if q.order == Order::Asc {
                        &self.stmts.range_asc
                    } else {
                        &self.stmts.range_desc
                    };
                    let limit = i32::try_from(want + 1).unwrap_or(i32::MAX);
                    type Row = (
                        i64,
                        i32,
                        Option<i64>,
                        Option<f64>,
                        Option<String>,
                        Option<bool>,
                    );
                    let r: Vec<Row> = rows(
                        self.exec(name, (t, d, key.as_str(), bucket, from, to, limit))
                            .await?,
                    )?;
                    for (ts, vt, l, f, s, b) in r {
                        let past = match (&after, q.order) {
                            (Some((ats, akey)), Order::Asc) => {
                                (ts, key.as_str()) > (*ats, akey.as_str())
                            }
                            (Some((ats, akey)), Order::Desc) => {
                                (ts, key.as_str()) < (*ats, akey.as_str())
                            }
                            (None, _) => true,
                        };
                        if !past {
                            continue;
                        }
                        all.push(Point {
                            device: q.device.clone(),
                            key: key.clone(),
                            ts_ms: ts,
                            value: untyped((vt, l, f, s, b))?,
                        });
                        got += 1;
                    }
                    if got >= want {
                        break;
                    }
                }
            }
            all.sort_by(|a, b| (a.ts_ms, &a.key).cmp(&(b.ts_ms, &b.key)));
            if q.order == Order::Desc {
                all.reverse();
            }
            all.truncate(want);
            let next = if all.len() > q.limit as usize {
                all.truncate(q.limit as usize);
                all.last().map(|p| format!("{}:{}", p.ts_ms, p.key))
            } else {
                None
            };
            Ok(PointPage { points: all, next })
        })
    }
}
