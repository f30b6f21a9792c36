//! In-memory tables that execute the parsed CQL subset with Cassandra's rules where the
//! adapter relies on them: partition-key lookups, clustering-order ranges, last-write-wins
//! cells by write timestamp (`USING TIMESTAMP`), TTL per write, `INSERT ... IF NOT
//! EXISTS` and `UPDATE ... IF col = ?` answering `[applied]`, LIMIT and paging.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::parse::{CqlType, Literal, Op, Rel, Stmt, Term, Using};

/// A stored value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum V {
    /// text
    Text(String),
    /// bigint / timestamp
    BigInt(i64),
    /// int
    Int(i32),
    /// boolean
    Bool(bool),
    /// double
    Double(f64),
    /// blob
    Blob(Vec<u8>),
}

impl V {
    fn rank(&self) -> u8 {
        match self {
            V::Text(_) => 0,
            V::BigInt(_) => 1,
            V::Int(_) => 2,
            V::Bool(_) => 3,
            V::Double(_) => 4,
            V::Blob(_) => 5,
        }
    }
}

impl Eq for V {}

impl PartialOrd for V {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for V {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (V::Text(a), V::Text(b)) => a.cmp(b),
            (V::BigInt(a), V::BigInt(b)) => a.cmp(b),
            (V::Int(a), V::Int(b)) => a.cmp(b),
            (V::Bool(a), V::Bool(b)) => a.cmp(b),
            (V::Double(a), V::Double(b)) => a.total_cmp(b),
            (V::Blob(a), V::Blob(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// Decodes a serialized value of type `t`.
pub(crate) fn decode(t: CqlType, b: &[u8]) -> Result<V, String> {
    let fixed = |n: usize| {
        if b.len() == n {
            Ok(())
        } else {
            Err(format!("{t:?} value of {} bytes", b.len()))
        }
    };
    Ok(match t {
        CqlType::Text => {
            V::Text(String::from_utf8(b.to_vec()).map_err(|_| "text is not UTF-8".to_string())?)
        }
        CqlType::BigInt | CqlType::Timestamp => {
            fixed(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            V::BigInt(i64::from_be_bytes(a))
        }
        CqlType::Int => {
            fixed(4)?;
            V::Int(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        CqlType::Boolean => {
            fixed(1)?;
            V::Bool(b[0] != 0)
        }
        CqlType::Double => {
            fixed(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            V::Double(f64::from_be_bytes(a))
        }
        CqlType::Blob => V::Blob(b.to_vec()),
    })
}

/// Serializes a value.
pub(crate) fn encode(v: &V) -> Vec<u8> {
    match v {
        V::Text(s) => s.as_bytes().to_vec(),
        V::BigInt(i) => i.to_be_bytes().to_vec(),
        V::Int(i) => i.to_be_bytes().to_vec(),
        V::Bool(b) => vec![u8::from(*b)],
        V::Double(f) => f.to_be_bytes().to_vec(),
        V::Blob(b) => b.clone(),
    }
}

fn from_literal(t: CqlType, l: &Literal) -> Result<Option<V>, String> {
    Ok(Some(match (t, l) {
        (_, Literal::Null) => return Ok(None),
        (CqlType::Text, Literal::Str(s)) => V::Text(s.clone()),
        (CqlType::BigInt | CqlType::Timestamp, Literal::Int(i)) => V::BigInt(*i),
        (CqlType::Int, Literal::Int(i)) => {
            V::Int(i32::try_from(*i).map_err(|_| "int out of range".to_string())?)
        }
        (CqlType::Double, Literal::Float(f)) => V::Double(*f),
        (CqlType::Double, Literal::Int(i)) => V::Double(*i as f64),
        (CqlType::Boolean, Literal::Bool(b)) => V::Bool(*b),
        (t, l) => return Err(format!("literal {l:?} is not a {t:?}")),
    }))
}

/// Clustering restrictions: an equality prefix and/or range bounds, each over a key prefix.
type Restrictions = Vec<(Op, Vec<V>)>;

/// A table's definition.
#[derive(Debug, Clone)]
pub(crate) struct TableDef {
    /// Columns in order.
    pub(crate) columns: Vec<(String, CqlType)>,
    /// Partition key.
    pub(crate) partition: Vec<String>,
    /// Clustering key.
    pub(crate) clustering: Vec<String>,
}

impl TableDef {
    /// The type of a column.
    pub(crate) fn type_of(&self, col: &str) -> Result<CqlType, String> {
        self.columns
            .iter()
            .find(|(c, _)| c == col)
            .map(|(_, t)| *t)
            .ok_or_else(|| format!("undefined column name {col}"))
    }
}

#[derive(Debug, Clone)]
struct Cell {
    v: Option<V>,
    ts: i64,
    expires_us: Option<i64>,
}

impl Cell {
    fn alive(&self, now_us: i64) -> bool {
        self.expires_us.is_none_or(|e| e > now_us)
    }
}

/// Cells of one row; the row marker (written by INSERT) is the cell named "".
type Row = HashMap<String, Cell>;

#[derive(Debug, Default)]
struct Table {
    data: BTreeMap<Vec<V>, BTreeMap<Vec<V>, Row>>,
}

/// The one-row answer of a lightweight transaction.
fn applied(a: bool) -> Outcome {
    Outcome::Rows {
        columns: vec![("[applied]".into(), ColumnType::Col(CqlType::Boolean))],
        rows: vec![vec![Some(vec![u8::from(a)])]],
        paging_state: None,
    }
}

/// The outcome of a statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Nothing to return.
    Void,
    /// Rows: column specs, rows, and the paging state of the next page.
    Rows {
        /// Column names and types.
        columns: Vec<(String, ColumnType)>,
        /// Cells.
        rows: Vec<Vec<Option<Vec<u8>>>>,
        /// Where the next page starts.
        paging_state: Option<Vec<u8>>,
    },
}

/// A result column type: a table column's, or the `[applied]` boolean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnType {
    /// A table column type.
    Col(CqlType),
}

/// Execution options from the request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Bound values in marker order.
    pub(crate) values: Vec<Option<Vec<u8>>>,
    /// Rows per page.
    pub(crate) page_size: Option<i32>,
    /// Where to resume.
    pub(crate) paging_state: Option<Vec<u8>>,
    /// Client-supplied write timestamp (µs).
    pub(crate) timestamp: Option<i64>,
}

/// The keyspaces and tables of one double.
#[derive(Debug, Default)]
pub(crate) struct Engine {
    keyspaces: HashSet<String>,
    defs: HashMap<(String, String), TableDef>,
    tables: HashMap<(String, String), Table>,
    last_us: i64,
}

/// Types of the bind markers of a statement, in order, with their names.
pub(crate) fn bind_types(engine: &Engine, stmt: &Stmt) -> Result<Vec<(String, CqlType)>, String> {
    let mut out = Vec::new();
    let mut push = |t: &Term, name: &str, ty: CqlType| {
        if let Term::Bind(i) = t {
            if out.len() != *i {
                return Err("bind markers out of order".to_string());
            }
            out.push((name.to_owned(), ty));
        }
        Ok(())
    };
    let using = |u: &Using, push: &mut dyn FnMut(&Term, &str, CqlType) -> Result<(), String>| {
        if let Some(t) = &u.ttl {
            push(t, "[ttl]", CqlType::Int)?;
        }
        if let Some(t) = &u.timestamp {
            push(t, "[timestamp]", CqlType::BigInt)?;
        }
        Ok::<(), String>(())
    };
    match stmt {
        Stmt::CreateKeyspace { .. } | Stmt::CreateTable { .. } => {}
        Stmt::Insert {
            ks,
            table,
            columns,
            values,
            using: u,
            ..
        } => {
            let def = engine.def(ks, table)?;
            for (c, t) in columns.iter().zip(values) {
                push(t, c, def.type_of(c)?)?;
            }
            using(u, &mut push)?;
        }
        Stmt::Select {
            ks,
            table,
            rels,
            limit,
            ..
        } => {
            let def = engine.def(ks, table)?;
            for r in rels {
                push(&r.term, &r.col, def.type_of(&r.col)?)?;
            }
            if let Some(l) = limit {
                push(l, "[limit]", CqlType::Int)?;
            }
        }
        Stmt::Update {
            ks,
            table,
            set,
            rels,
            using: u,
            conditions,
        } => {
            let def = engine.def(ks, table)?;
            using(u, &mut push)?;
            for (c, t) in set {
                push(t, c, def.type_of(c)?)?;
            }
            for r in rels {
                push(&r.term, &r.col, def.type_of(&r.col)?)?;
            }
            for (c, t) in conditions {
                push(t, c, def.type_of(c)?)?;
            }
        }
        Stmt::Delete {
            ks,
            table,
            rels,
            using: u,
        } => {
            let def = engine.def(ks, table)?;
            using(u, &mut push)?;
            for r in rels {
                push(&r.term, &r.col, def.type_of(&r.col)?)?;
            }
        }
    }
    Ok(out)
}

/// Result columns of a statement (for PREPARED metadata).
pub(crate) fn result_columns(
    engine: &Engine,
    stmt: &Stmt,
) -> Result<Option<Vec<(String, CqlType)>>, String> {
    Ok(match stmt {
        Stmt::Select {
            ks, table, columns, ..
        } => {
            let def = engine.def(ks, table)?;
            Some(match columns {
                None => def.columns.clone(),
                Some(cs) => cs
                    .iter()
                    .map(|c| Ok((c.clone(), def.type_of(c)?)))
                    .collect::<Result<_, String>>()?,
            })
        }
        Stmt::Insert {
            if_not_exists: true,
            ..
        } => Some(vec![("[applied]".into(), CqlType::Boolean)]),
        Stmt::Update { conditions, .. } if !conditions.is_empty() => {
            Some(vec![("[applied]".into(), CqlType::Boolean)])
        }
        _ => None,
    })
}

impl Engine {
    /// Every text value stored, one per line (for "no secret in any table" checks).
    pub(crate) fn dump_text(&self) -> String {
        let mut out = String::new();
        for t in self.tables.values() {
            for (pk, part) in &t.data {
                for (ck, row) in part {
                    let cells = row.values().filter_map(|c| c.v.as_ref());
                    for v in pk.iter().chain(ck).chain(cells) {
                        if let V::Text(s) = v {
                            out.push_str(s);
                            out.push('\n');
                        }
                    }
                }
            }
        }
        out
    }

    fn def(&self, ks: &str, table: &str) -> Result<&TableDef, String> {
        self.defs
            .get(&(ks.to_owned(), table.to_owned()))
            .ok_or_else(|| format!("unconfigured table {ks}.{table}"))
    }

    /// The keyspace and table a statement refers to, for result metadata.
    pub(crate) fn target(stmt: &Stmt) -> (String, String) {
        match stmt {
            Stmt::CreateKeyspace { name } => (name.clone(), String::new()),
            Stmt::CreateTable { ks, table, .. }
            | Stmt::Insert { ks, table, .. }
            | Stmt::Select { ks, table, .. }
            | Stmt::Update { ks, table, .. }
            | Stmt::Delete { ks, table, .. } => (ks.clone(), table.clone()),
        }
    }

    fn value(&self, t: &Term, ty: CqlType, o: &Options) -> Result<Option<V>, String> {
        match t {
            Term::Lit(l) => from_literal(ty, l),
            Term::Bind(i) => match o.values.get(*i) {
                Some(Some(b)) => decode(ty, b).map(Some),
                Some(None) => Ok(None),
                None => Err(format!("no value for bind marker {i}")),
            },
        }
    }

    fn write_ts(
        &mut self,
        u: &Using,
        o: &Options,
        now_us: i64,
    ) -> Result<(i64, Option<i64>), String> {
        let ts = match &u.timestamp {
            Some(t) => match self.value(t, CqlType::BigInt, o)? {
                Some(V::BigInt(ts)) => ts,
                _ => return Err("USING TIMESTAMP needs a bigint".into()),
            },
            None => o.timestamp.unwrap_or_else(|| {
                // Strictly increasing server timestamps, so later writes win.
                self.last_us = self.last_us.max(now_us - 1) + 1;
                self.last_us
            }),
        };
        let expires = match &u.ttl {
            Some(t) => match self.value(t, CqlType::Int, o)? {
                Some(V::Int(0)) | None => None,
                Some(V::Int(s)) if s > 0 => Some(now_us + i64::from(s) * 1_000_000),
                _ => return Err("TTL must be a non-negative int".into()),
            },
            None => None,
        };
        Ok((ts, expires))
    }

    /// Partition key and clustering restrictions of a WHERE clause.
    fn keys(
        &self,
        def: &TableDef,
        rels: &[Rel],
        o: &Options,
    ) -> Result<(Vec<V>, Restrictions), String> {
        let mut pk = Vec::new();
        for c in &def.partition {
            let r = rels
                .iter()
                .find(|r| &r.col == c && r.op == Op::Eq)
                .ok_or_else(|| format!("partition key column {c} must be restricted by ="))?;
            pk.push(
                self.value(&r.term, def.type_of(c)?, o)?
                    .ok_or("null partition key")?,
            );
        }
        let mut prefix = Vec::new();
        let mut ranges = Vec::new();
        for c in &def.clustering {
            let rs: Vec<&Rel> = rels.iter().filter(|r| &r.col == c).collect();
            if rs.is_empty() {
                break;
            }
            if let [r] = rs.as_slice()
                && r.op == Op::Eq
                && ranges.is_empty()
            {
                prefix.push(
                    self.value(&r.term, def.type_of(c)?, o)?
                        .ok_or("null clustering key")?,
                );
                continue;
            }
            for r in rs {
                let v = self
                    .value(&r.term, def.type_of(c)?, o)?
                    .ok_or("null clustering bound")?;
                let mut bound = prefix.clone();
                bound.push(v);
                ranges.push((r.op, bound));
            }
            break;
        }
        for r in rels {
            if !def.partition.contains(&r.col) && !def.clustering.contains(&r.col) {
                return Err(format!(
                    "cannot restrict regular column {} (the double does no filtering)",
                    r.col
                ));
            }
        }
        let mut restrictions = Vec::new();
        if !prefix.is_empty() {
            restrictions.push((Op::Eq, prefix));
        }
        restrictions.extend(ranges);
        Ok((pk, restrictions))
    }

    fn matches(ck: &[V], restrictions: &[(Op, Vec<V>)]) -> bool {
        restrictions.iter().all(|(op, bound)| {
            let head = &ck[..bound.len().min(ck.len())];
            match op {
                Op::Eq => head == bound.as_slice(),
                Op::Lt => head < bound.as_slice(),
                Op::Le => head <= bound.as_slice(),
                Op::Gt => head > bound.as_slice(),
                Op::Ge => head >= bound.as_slice(),
            }
        })
    }

    fn row_alive(row: &Row, now_us: i64) -> bool {
        row.values().any(|c| c.alive(now_us) && (c.v.is_some()))
    }

    fn put(row: &mut Row, col: &str, v: Option<V>, ts: i64, expires_us: Option<i64>) {
        let newer = row.get(col).is_none_or(|c| ts >= c.ts);
        if newer {
            row.insert(col.to_owned(), Cell { v, ts, expires_us });
        }
    }

    /// Executes a statement.
    pub(crate) fn execute(
        &mut self,
        stmt: &Stmt,
        o: &Options,
        now_us: i64,
    ) -> Result<Outcome, String> {
        match stmt {
            Stmt::CreateKeyspace { name } => {
                self.keyspaces.insert(name.clone());
                Ok(Outcome::Void)
            }
            Stmt::CreateTable {
                ks,
                table,
                columns,
                partition,
                clustering,
            } => {
                if !self.keyspaces.contains(ks) {
                    return Err(format!("keyspace {ks} does not exist"));
                }
                for c in partition.iter().chain(clustering) {
                    if !columns.iter().any(|(n, _)| n == c) {
                        return Err(format!("key column {c} is not defined"));
                    }
                }
                let key = (ks.clone(), table.clone());
                self.defs.entry(key.clone()).or_insert_with(|| TableDef {
                    columns: columns.clone(),
                    partition: partition.clone(),
                    clustering: clustering.clone(),
                });
                self.tables.entry(key).or_default();
                Ok(Outcome::Void)
            }
            Stmt::Insert {
                ks,
                table,
                columns,
                values,
                if_not_exists,
                using,
            } => {
                let def = self.def(ks, table)?.clone();
                let (ts, expires) = self.write_ts(using, o, now_us)?;
                let mut cells = HashMap::new();
                for (c, t) in columns.iter().zip(values) {
                    cells.insert(c.clone(), self.value(t, def.type_of(c)?, o)?);
                }
                let key_of = |cols: &[String]| -> Result<Vec<V>, String> {
                    cols.iter()
                        .map(|c| {
                            cells
                                .get(c)
                                .cloned()
                                .flatten()
                                .ok_or_else(|| format!("missing key column {c}"))
                        })
                        .collect()
                };
                let (pk, ck) = (key_of(&def.partition)?, key_of(&def.clustering)?);
                let t = self.tables.entry((ks.clone(), table.clone())).or_default();
                let row = t.data.entry(pk).or_default().entry(ck).or_default();
                if *if_not_exists && Self::row_alive(row, now_us) {
                    return Ok(applied(false));
                }
                Self::put(row, "", Some(V::Bool(true)), ts, expires);
                for (c, v) in cells {
                    if !def.partition.contains(&c) && !def.clustering.contains(&c) {
                        Self::put(row, &c, v, ts, expires);
                    }
                }
                Ok(if *if_not_exists {
                    applied(true)
                } else {
                    Outcome::Void
                })
            }
            Stmt::Update {
                ks,
                table,
                set,
                rels,
                using,
                conditions,
            } => {
                let def = self.def(ks, table)?.clone();
                let (ts, expires) = self.write_ts(using, o, now_us)?;
                let (pk, restrictions) = self.keys(&def, rels, o)?;
                let ck = match restrictions.as_slice() {
                    [(Op::Eq, ck)] if ck.len() == def.clustering.len() => ck.clone(),
                    [] if def.clustering.is_empty() => Vec::new(),
                    _ => return Err("UPDATE must name one full primary key".into()),
                };
                let mut values = Vec::new();
                for (c, t) in set {
                    values.push((c.clone(), self.value(t, def.type_of(c)?, o)?));
                }
                let mut wanted = Vec::new();
                for (c, t) in conditions {
                    wanted.push((c.clone(), self.value(t, def.type_of(c)?, o)?));
                }
                let t = self.tables.entry((ks.clone(), table.clone())).or_default();
                if !conditions.is_empty() {
                    // A missing row or cell compares as null, as in Cassandra.
                    let row = t.data.get(&pk).and_then(|p| p.get(&ck));
                    let holds = wanted.iter().all(|(c, want)| {
                        let have = row
                            .and_then(|r| r.get(c))
                            .filter(|cell| cell.alive(now_us))
                            .and_then(|cell| cell.v.as_ref());
                        have == want.as_ref()
                    });
                    if !holds {
                        return Ok(applied(false));
                    }
                    let row = t.data.entry(pk).or_default().entry(ck).or_default();
                    for (c, v) in values {
                        Self::put(row, &c, v, ts, expires);
                    }
                    return Ok(applied(true));
                }
                let row = t.data.entry(pk).or_default().entry(ck).or_default();
                for (c, v) in values {
                    Self::put(row, &c, v, ts, expires);
                }
                Ok(Outcome::Void)
            }
            Stmt::Delete {
                ks, table, rels, ..
            } => {
                let def = self.def(ks, table)?.clone();
                let (pk, restrictions) = self.keys(&def, rels, o)?;
                if let Some(t) = self.tables.get_mut(&(ks.clone(), table.clone()))
                    && let Some(part) = t.data.get_mut(&pk)
                {
                    part.retain(|ck, _| !Self::matches(ck, &restrictions));
                    if part.is_empty() {
                        t.data.remove(&pk);
                    }
                }
                Ok(Outcome::Void)
            }
            Stmt::Select {
                ks,
                table,
                columns,
                rels,
                desc,
                limit,
            } => {
                let def = self.def(ks, table)?.clone();
                let (pk, restrictions) = self.keys(&def, rels, o)?;
                let cols: Vec<(String, CqlType)> = match columns {
                    None => def.columns.clone(),
                    Some(cs) => cs
                        .iter()
                        .map(|c| Ok((c.clone(), def.type_of(c)?)))
                        .collect::<Result<_, String>>()?,
                };
                let limit = match limit {
                    Some(t) => match self.value(t, CqlType::Int, o)? {
                        Some(V::Int(n)) if n > 0 => Some(n as usize),
                        _ => return Err("LIMIT must be a positive int".into()),
                    },
                    None => None,
                };
                let mut rows = Vec::new();
                if let Some(part) = self
                    .tables
                    .get(&(ks.clone(), table.clone()))
                    .and_then(|t| t.data.get(&pk))
                {
                    let iter: Box<dyn Iterator<Item = (&Vec<V>, &Row)>> = if *desc {
                        Box::new(part.iter().rev())
                    } else {
                        Box::new(part.iter())
                    };
                    for (ck, row) in iter {
                        if !Self::matches(ck, &restrictions) || !Self::row_alive(row, now_us) {
                            continue;
                        }
                        let cell = |c: &str| -> Option<Vec<u8>> {
                            if let Some(i) = def.partition.iter().position(|p| p == c) {
                                return Some(encode(&pk[i]));
                            }
                            if let Some(i) = def.clustering.iter().position(|p| p == c) {
                                return Some(encode(&ck[i]));
                            }
                            row.get(c)
                                .filter(|x| x.alive(now_us))
                                .and_then(|x| x.v.as_ref())
                                .map(encode)
                        };
                        rows.push(cols.iter().map(|(c, _)| cell(c)).collect::<Vec<_>>());
                        if limit.is_some_and(|l| rows.len() >= l) {
                            break;
                        }
                    }
                }
                // Paging: the state is the offset of the next row.
                let start = match &o.paging_state {
                    Some(s) if s.len() == 4 => {
                        u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize
                    }
                    Some(_) => return Err("paging state not issued by this double".into()),
                    None => 0,
                };
                let page = o
                    .page_size
                    .filter(|p| *p > 0)
                    .map_or(usize::MAX, |p| p as usize);
                let end = start.saturating_add(page).min(rows.len());
                let paging_state = (end < rows.len()).then(|| (end as u32).to_be_bytes().to_vec());
                let rows = rows
                    .get(start.min(rows.len())..end)
                    .unwrap_or_default()
                    .to_vec();
                Ok(Outcome::Rows {
                    columns: cols
                        .into_iter()
                        .map(|(c, t)| (c, ColumnType::Col(t)))
                        .collect(),
                    rows,
                    paging_state,
                })
            }
        }
    }
}
