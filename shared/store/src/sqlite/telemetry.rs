//! The SQLite adapter's device data: time-series writes, latest values and range queries; attribute values.

use super::*;
use crate::TelemetryStore;

impl TelemetryStore for SqliteStore {
    fn put_attributes(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        values: Values,
        ts_ms: i64,
    ) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            {
                let mut s = tx
                    .prepare_cached(
                        "INSERT INTO attributes (tenant, device, scope, key, ts, vtype, v) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (tenant, device, scope, key) DO UPDATE SET ts = excluded.ts, vtype = excluded.vtype, v = excluded.v
                         WHERE excluded.ts >= attributes.ts",
                    )
                    .map_err(sql_err)?;
                for (k, v) in &values {
                    let (vtype, v) = value_to_sql(v);
                    s.execute(params![tenant.as_str(), device.as_str(), scope.as_str(), k, ts_ms, vtype, v])
                        .map_err(sql_err)?;
                }
            }
            tx.commit().map_err(sql_err)
        })
    }

    fn attributes(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        keys: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Values>> {
        self.run(move |c, _| {
            let rows = attribute_rows(c, &tenant, &device, scope, i64::MIN)?;
            Ok(rows
                .into_iter()
                .filter(|(key, _)| keys.as_ref().is_none_or(|ks| ks.contains(key)))
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
        self.run(move |c, _| {
            let rows = attribute_rows(c, &tenant, &device, scope, since_ms)?;
            Ok(rows.into_iter().collect())
        })
    }

    fn write_samples(&self, batches: Vec<SampleBatch>) -> BoxFuture<'_, Result<usize>> {
        let cache = self.series.clone();
        self.run(move |c, now| {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            let result = write_points(c, &mut cache, &batches, now);
            if result.is_err() {
                // Series created in the failed transaction are gone with it.
                *cache = SeriesCache::default();
            }
            result
        })
    }

    fn latest(
        &self,
        tenant: TenantId,
        device: DeviceId,
        keys: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Vec<Point>>> {
        self.run(move |c, now| {
            let mut s = c
                .prepare_cached(
                    "SELECT s.key, l.ts, l.vtype, l.v FROM series s JOIN ts_latest l ON l.series = s.id
                     WHERE s.tenant = ?1 AND s.device = ?2
                     AND (l.expires_at IS NULL OR l.expires_at > ?3) ORDER BY s.key",
                )
                .map_err(sql_err)?;
            let mut rows = s
                .query(params![tenant.as_str(), device.as_str(), now])
                .map_err(sql_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sql_err)? {
                let key: String = r.get(0).map_err(sql_err)?;
                if keys.as_ref().is_some_and(|ks| !ks.contains(&key)) {
                    continue;
                }
                out.push(Point {
                    device: device.clone(),
                    ts_ms: r.get(1).map_err(sql_err)?,
                    value: value_from_sql(
                        r.get(2).map_err(sql_err)?,
                        r.get_ref(3).map_err(sql_err)?,
                    )?,
                    key,
                });
            }
            Ok(out)
        })
    }

    fn query(&self, q: RangeQuery) -> BoxFuture<'_, Result<PointPage>> {
        self.run(move |c, now| {
            if q.limit == 0 {
                return Ok(PointPage {
                    points: Vec::new(),
                    next: None,
                });
            }
            let after = q.page_token.as_deref().map(parse_token).transpose()?;
            let (cmp, dir) = match q.order {
                Order::Asc => (">", "ASC"),
                Order::Desc => ("<", "DESC"),
            };
            let n = q.keys.len();
            let mut sql = format!(
                "SELECT s.key, k.ts, k.vtype, k.v FROM series s JOIN ts_kv k ON k.series = s.id
                 WHERE s.tenant = ?1 AND s.device = ?2 AND k.ts >= ?3 AND k.ts < ?4
                 AND (k.expires_at IS NULL OR k.expires_at > ?5){}",
                if n == 0 {
                    String::new() // every key
                } else {
                    format!(" AND s.key IN ({})", keys_clause(6, n))
                }
            );
            let mut p: Vec<SqlValue> = vec![
                SqlValue::Text(q.tenant.as_str().to_owned()),
                SqlValue::Text(q.device.as_str().to_owned()),
                SqlValue::Integer(q.from_ms),
                SqlValue::Integer(q.to_ms),
                SqlValue::Integer(now),
            ];
            p.extend(q.keys.iter().map(|k| SqlValue::Text(k.clone())));
            if let Some((ts, key)) = &after {
                sql.push_str(&format!(
                    " AND (k.ts, s.key) {cmp} (?{}, ?{})",
                    6 + n,
                    7 + n
                ));
                p.push(SqlValue::Integer(*ts));
                p.push(SqlValue::Text(key.clone()));
            }
            sql.push_str(&format!(
                " ORDER BY k.ts {dir}, s.key {dir} LIMIT {}",
                u64::from(q.limit) + 1
            ));
            let mut s = c.prepare_cached(&sql).map_err(sql_err)?;
            let mut rows = s.query(params_from_iter(p)).map_err(sql_err)?;
            let mut points = Vec::new();
            while let Some(r) = rows.next().map_err(sql_err)? {
                points.push(Point {
                    device: q.device.clone(),
                    key: r.get(0).map_err(sql_err)?,
                    ts_ms: r.get(1).map_err(sql_err)?,
                    value: value_from_sql(
                        r.get(2).map_err(sql_err)?,
                        r.get_ref(3).map_err(sql_err)?,
                    )?,
                });
            }
            let next = if points.len() > q.limit as usize {
                points.truncate(q.limit as usize);
                points.last().map(|p| format!("{}:{}", p.ts_ms, p.key))
            } else {
                None
            };
            Ok(PointPage { points, next })
        })
    }
}
