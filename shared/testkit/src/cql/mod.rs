//! The CQL test double: a CQL native protocol v4 server on 127.0.0.1 that the real
//! `scylla` driver connects to.
//!
//! **What it is for:** the faults a real database cannot give on demand (injected
//! timeouts, "unavailable", "overloaded", added latency), in the store's and the writer's
//! fault tests. Everything else runs on a real CQL database at `SCYLLA_URI` (Apache
//! Cassandra 5.0 in CI, `scripts/services/cassandra`; see [`node`]): no test uses the
//! double where the real server would do, and without `SCYLLA_URI` those tests say they
//! are ignored.
//!
//! **What it models:**
//! - The connection handshake the driver performs. OPTIONS → SUPPORTED, without any
//!   `SCYLLA_*` key, so the driver treats the double as one plain Cassandra-protocol node.
//!   STARTUP → READY and REGISTER → READY.
//! - The metadata queries the driver prepares and executes while building a session.
//!   `system.local` answers as one node that owns token 0 at the listening address, and
//!   `system.peers` is empty. The `system_schema` tables are empty. The Scylla-only
//!   schema tables answer `Invalid`, which the driver tolerates. The schema-agreement
//!   query is answered.
//! - Multiplexed stream ids.
//! - QUERY, PREPARE, EXECUTE and BATCH for the CQL subset in `parse.rs`, executed against
//!   in-memory tables by `engine.rs`:
//!   - partition-key lookups, clustering-order ranges, ORDER BY, LIMIT;
//!   - paging, with the page size and paging state of the request;
//!   - last-write-wins cells by write timestamp (`USING TIMESTAMP`, or the client's
//!     default timestamp) and TTL per write;
//!   - `INSERT ... IF NOT EXISTS` and `UPDATE ... IF col = ? AND ...` answering
//!     `[applied]` (one node, so every lightweight transaction is simply atomic; a
//!     refused one answers `[applied] = false` without the row's current columns).
//! - Faults on demand ([`CqlDouble::inject`]): write timeout, read timeout, unavailable
//!   and overloaded, with the bodies the driver parses into typed errors. Added latency
//!   ([`CqlDouble::set_latency`]).
//! - Refusals: a statement outside the subset gets a `Syntax_error` (0x2000) naming it,
//!   and an unknown table gets `Invalid`. Neither is ever a silent success.
//!
//! **What it does not model:**
//! - authentication, compression, tracing, events;
//! - several nodes or shards, replication, consistency levels (every write is
//!   immediately visible);
//! - tombstones: a DELETE removes rows outright, so a later write with an older
//!   timestamp reappears here where Cassandra would hide it;
//! - secondary indexes, filtering, `IN`, collections in user tables, counters, UDTs,
//!   conditional DELETE, `IF EXISTS` and conditions other than `=`;
//! - a batch that fails halfway: there is no rollback, but an injected fault fails the
//!   whole batch before any statement runs;
//! - query planning costs: latency is only what is injected.

mod engine;
pub mod frame;
mod parse;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use engine::{Engine, Options, Outcome};
use frame::{Frame, Malformed, Reader, Writer, opcode};
use parse::{CqlType, Stmt};

/// CQL error codes used by the double.
#[allow(missing_docs)]
pub mod error_code {
    pub const PROTOCOL: i32 = 0x000A;
    pub const UNAVAILABLE: i32 = 0x1000;
    pub const OVERLOADED: i32 = 0x1001;
    pub const WRITE_TIMEOUT: i32 = 0x1100;
    pub const READ_TIMEOUT: i32 = 0x1200;
    pub const SYNTAX: i32 = 0x2000;
    pub const INVALID: i32 = 0x2200;
    pub const UNPREPARED: i32 = 0x2500;
}

/// CQL type option ids.
mod ty {
    pub(super) const BIGINT: u16 = 0x0002;
    pub(super) const BLOB: u16 = 0x0003;
    pub(super) const DOUBLE: u16 = 0x0007;
    pub(super) const TIMESTAMP: u16 = 0x000B;
    pub(super) const BOOLEAN: u16 = 0x0004;
    pub(super) const INT: u16 = 0x0009;
    pub(super) const UUID: u16 = 0x000C;
    pub(super) const VARCHAR: u16 = 0x000D;
    pub(super) const INET: u16 = 0x0010;
    pub(super) const LIST: u16 = 0x0020;
    pub(super) const MAP: u16 = 0x0021;
    pub(super) const SET: u16 = 0x0022;
}

/// A column type, as written in result metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColType {
    Simple(u16),
    ListOf(u16),
    SetOf(u16),
    MapOf(u16, u16),
}

impl ColType {
    fn of(t: CqlType) -> Self {
        ColType::Simple(match t {
            CqlType::Text => ty::VARCHAR,
            CqlType::BigInt => ty::BIGINT,
            CqlType::Int => ty::INT,
            CqlType::Boolean => ty::BOOLEAN,
            CqlType::Double => ty::DOUBLE,
            CqlType::Blob => ty::BLOB,
            CqlType::Timestamp => ty::TIMESTAMP,
        })
    }

    fn write(self, w: &mut Writer) {
        match self {
            ColType::Simple(t) => {
                w.short(t);
            }
            ColType::ListOf(t) => {
                w.short(ty::LIST).short(t);
            }
            ColType::SetOf(t) => {
                w.short(ty::SET).short(t);
            }
            ColType::MapOf(k, v) => {
                w.short(ty::MAP).short(k).short(v);
            }
        }
    }
}

/// A statement the double knows: its result columns and rows (cells already serialized).
#[derive(Debug, Clone)]
struct Canned {
    keyspace: &'static str,
    table: &'static str,
    columns: Vec<(&'static str, ColType)>,
    rows: Vec<Vec<Option<Vec<u8>>>>,
}

/// A statement of the CQL subset, with what its PREPARED response describes.
#[derive(Debug, Clone)]
struct Cql {
    stmt: Stmt,
    keyspace: String,
    table: String,
    binds: Vec<(String, CqlType)>,
    result: Option<Vec<(String, CqlType)>>,
}

/// What a statement does in the double.
#[derive(Debug, Clone)]
enum Statement {
    Rows(Canned),
    Cql(Box<Cql>),
    Error(i32, String),
}

/// A fault the double can inject into the next CQL statements (not the driver's system
/// queries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `Write_timeout` (0x1100), write type SIMPLE.
    WriteTimeout,
    /// `Read_timeout` (0x1200).
    ReadTimeout,
    /// `Unavailable` (0x1000).
    Unavailable,
    /// `Overloaded` (0x1001).
    Overloaded,
}

impl Fault {
    fn body(self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Fault::WriteTimeout => {
                w.int(error_code::WRITE_TIMEOUT)
                    .string("injected write timeout");
                w.short(0x0006).int(0).int(1).string("SIMPLE");
            }
            Fault::ReadTimeout => {
                w.int(error_code::READ_TIMEOUT)
                    .string("injected read timeout");
                w.short(0x0006).int(0).int(1);
                w.buf.push(0);
            }
            Fault::Unavailable => {
                w.int(error_code::UNAVAILABLE)
                    .string("injected unavailable");
                w.short(0x0006).int(1).int(0);
            }
            Fault::Overloaded => {
                w.int(error_code::OVERLOADED).string("injected overload");
            }
        }
        w.buf
    }
}

fn text(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

fn set_of_text(items: &[&str]) -> Option<Vec<u8>> {
    let mut w = Writer::new();
    w.int(items.len() as i32);
    for i in items {
        w.bytes(Some(i.as_bytes()));
    }
    Some(w.buf)
}

/// Collapses whitespace so the driver's multi-line query strings match.
fn normalize(q: &str) -> String {
    q.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// State shared by every connection of one double.
#[derive(Debug)]
struct Node {
    addr: SocketAddr,
    host_id: [u8; 16],
    schema_version: [u8; 16],
    prepared: Mutex<HashMap<Vec<u8>, (String, Statement)>>,
    engine: Mutex<Engine>,
    faults: Mutex<VecDeque<Fault>>,
    latency_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

impl Node {
    fn system_statement(&self, query: &str) -> Option<Statement> {
        use ColType::{ListOf, MapOf, SetOf, Simple};
        use ty::{BOOLEAN, INET, INT, UUID, VARCHAR};
        let ip = match self.addr.ip() {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        let canned = |keyspace, table, columns: Vec<(&'static str, ColType)>, rows| {
            Some(Statement::Rows(Canned {
                keyspace,
                table,
                columns,
                rows,
            }))
        };
        let invalid = |what: &str| {
            Some(Statement::Error(
                error_code::INVALID,
                format!("unconfigured table {what}"),
            ))
        };
        match normalize(query).as_str() {
            "SELECT host_id, rpc_address, data_center, rack, tokens FROM system.peers" => canned(
                "system",
                "peers",
                vec![
                    ("host_id", Simple(UUID)),
                    ("rpc_address", Simple(INET)),
                    ("data_center", Simple(VARCHAR)),
                    ("rack", Simple(VARCHAR)),
                    ("tokens", SetOf(VARCHAR)),
                ],
                vec![],
            ),
            "SELECT host_id, rpc_address, data_center, rack, tokens, cluster_name FROM system.local WHERE key='local'" => {
                canned(
                    "system",
                    "local",
                    vec![
                        ("host_id", Simple(UUID)),
                        ("rpc_address", Simple(INET)),
                        ("data_center", Simple(VARCHAR)),
                        ("rack", Simple(VARCHAR)),
                        ("tokens", SetOf(VARCHAR)),
                        ("cluster_name", Simple(VARCHAR)),
                    ],
                    vec![vec![
                        Some(self.host_id.to_vec()),
                        Some(ip),
                        text("datacenter1"),
                        text("rack1"),
                        set_of_text(&["0"]),
                        text("fluxgate-cql-double"),
                    ]],
                )
            }
            "SELECT schema_version FROM system.local WHERE key='local'" => canned(
                "system",
                "local",
                vec![("schema_version", Simple(UUID))],
                vec![vec![Some(self.schema_version.to_vec())]],
            ),
            "SELECT keyspace_name, replication, durable_writes FROM system_schema.keyspaces" => {
                canned(
                    "system_schema",
                    "keyspaces",
                    vec![
                        ("keyspace_name", Simple(VARCHAR)),
                        ("replication", MapOf(VARCHAR, VARCHAR)),
                        ("durable_writes", Simple(BOOLEAN)),
                    ],
                    vec![],
                )
            }
            "SELECT keyspace_name, type_name, field_names, field_types FROM system_schema.types" => {
                canned(
                    "system_schema",
                    "types",
                    vec![
                        ("keyspace_name", Simple(VARCHAR)),
                        ("type_name", Simple(VARCHAR)),
                        ("field_names", ListOf(VARCHAR)),
                        ("field_types", ListOf(VARCHAR)),
                    ],
                    vec![],
                )
            }
            "SELECT keyspace_name, table_name, column_name, kind, position, type FROM system_schema.columns" => {
                canned(
                    "system_schema",
                    "columns",
                    vec![
                        ("keyspace_name", Simple(VARCHAR)),
                        ("table_name", Simple(VARCHAR)),
                        ("column_name", Simple(VARCHAR)),
                        ("kind", Simple(VARCHAR)),
                        ("position", Simple(INT)),
                        ("type", Simple(VARCHAR)),
                    ],
                    vec![],
                )
            }
            "SELECT keyspace_name, table_name FROM system_schema.tables" => canned(
                "system_schema",
                "tables",
                vec![
                    ("keyspace_name", Simple(VARCHAR)),
                    ("table_name", Simple(VARCHAR)),
                ],
                vec![],
            ),
            "SELECT keyspace_name, view_name, base_table_name FROM system_schema.views" => canned(
                "system_schema",
                "views",
                vec![
                    ("keyspace_name", Simple(VARCHAR)),
                    ("view_name", Simple(VARCHAR)),
                    ("base_table_name", Simple(VARCHAR)),
                ],
                vec![],
            ),
            "SELECT keyspace_name, table_name, partitioner FROM system_schema.scylla_tables" => {
                invalid("system_schema.scylla_tables")
            }
            "SELECT keyspace_name, initial_tablets FROM system_schema.scylla_keyspaces" => {
                invalid("system_schema.scylla_keyspaces")
            }
            _ => None,
        }
    }

    /// What a statement does: a system query, a statement of the CQL subset, or a syntax
    /// error naming it.
    fn statement(&self, query: &str) -> Statement {
        if let Some(st) = self.system_statement(query) {
            return st;
        }
        let (stmt, _) = match parse::parse(query) {
            Ok(p) => p,
            Err(e) => {
                return Statement::Error(
                    error_code::SYNTAX,
                    format!(
                        "the CQL test double does not understand: {} ({e})",
                        normalize(query)
                    ),
                );
            }
        };
        let engine = lock(&self.engine);
        let described = engine::bind_types(&engine, &stmt)
            .and_then(|b| Ok((b, engine::result_columns(&engine, &stmt)?)));
        match described {
            Ok((binds, result)) => {
                let (keyspace, table) = Engine::target(&stmt);
                Statement::Cql(Box::new(Cql {
                    stmt,
                    keyspace,
                    table,
                    binds,
                    result,
                }))
            }
            Err(e) => Statement::Error(error_code::INVALID, e),
        }
    }

    /// Runs a CQL statement, with injected faults first.
    fn run(&self, c: &Cql, o: &Options) -> (u8, Vec<u8>) {
        if let Some(f) = lock(&self.faults).pop_front() {
            return (opcode::ERROR, f.body());
        }
        match lock(&self.engine).execute(&c.stmt, o, now_us()) {
            Ok(Outcome::Void) => {
                let mut w = Writer::new();
                w.int(0x0001);
                (opcode::RESULT, w.buf)
            }
            Ok(Outcome::Rows {
                columns,
                rows,
                paging_state,
            }) => {
                let mut w = Writer::new();
                w.int(0x0002);
                let flags = 0x0001 | if paging_state.is_some() { 0x0002 } else { 0 };
                w.int(flags).int(columns.len() as i32);
                if let Some(ps) = &paging_state {
                    w.bytes(Some(ps));
                }
                w.string(&c.keyspace).string(&c.table);
                for (name, engine::ColumnType::Col(t)) in &columns {
                    w.string(name);
                    ColType::of(*t).write(&mut w);
                }
                w.int(rows.len() as i32);
                for row in &rows {
                    for cell in row {
                        w.bytes(cell.as_deref());
                    }
                }
                (opcode::RESULT, w.buf)
            }
            Err(e) => (opcode::ERROR, error_body(error_code::INVALID, &e)),
        }
    }
}

/// Reads `<consistency><flags>[values][page_size][paging_state][serial][timestamp]`.
fn query_options(r: &mut Reader<'_>) -> Result<Options, Malformed> {
    let _consistency = r.short()?;
    let flags = r.byte()?;
    let mut o = Options::default();
    if flags & 0x01 != 0 {
        let n = r.short()?;
        for _ in 0..n {
            o.values.push(r.bytes()?);
        }
    }
    if flags & 0x04 != 0 {
        o.page_size = Some(r.int()?);
    }
    if flags & 0x08 != 0 {
        o.paging_state = r.bytes()?;
    }
    if flags & 0x10 != 0 {
        let _serial = r.short()?;
    }
    if flags & 0x20 != 0 {
        o.timestamp = Some(r.long()?);
    }
    Ok(o)
}

fn error_body(code: i32, message: &str) -> Vec<u8> {
    let mut w = Writer::new();
    w.int(code).string(message);
    w.buf
}

fn rows_body(c: &Canned) -> Vec<u8> {
    let mut w = Writer::new();
    w.int(0x0002); // Rows
    w.int(0x0001).int(c.columns.len() as i32); // global table spec
    w.string(c.keyspace).string(c.table);
    for (name, t) in &c.columns {
        w.string(name);
        t.write(&mut w);
    }
    w.int(c.rows.len() as i32);
    for row in &c.rows {
        for cell in row {
            w.bytes(cell.as_deref());
        }
    }
    w.buf
}

fn prepared_body(id: &[u8], statement: &Statement) -> Vec<u8> {
    let mut w = Writer::new();
    w.int(0x0004); // Prepared
    w.short_bytes(id);
    match statement {
        Statement::Cql(c) if !c.binds.is_empty() => {
            w.int(0x0001).int(c.binds.len() as i32).int(0);
            w.string(&c.keyspace).string(&c.table);
            for (name, t) in &c.binds {
                w.string(name);
                ColType::of(*t).write(&mut w);
            }
        }
        _ => {
            w.int(0).int(0).int(0);
        }
    }
    match statement {
        Statement::Rows(c) => {
            w.int(0x0001).int(c.columns.len() as i32);
            w.string(c.keyspace).string(c.table);
            for (name, t) in &c.columns {
                w.string(name);
                t.write(&mut w);
            }
        }
        Statement::Cql(c) if c.result.is_some() => {
            let cols = c.result.as_deref().unwrap_or_default();
            w.int(0x0001).int(cols.len() as i32);
            w.string(&c.keyspace).string(&c.table);
            for (name, t) in cols {
                w.string(name);
                ColType::of(*t).write(&mut w);
            }
        }
        _ => {
            w.int(0x0004).int(0); // no result metadata
        }
    }
    w.buf
}

fn response(node: &Node, st: &Statement, o: &Options) -> (u8, Vec<u8>) {
    match st {
        Statement::Rows(c) => (opcode::RESULT, rows_body(c)),
        Statement::Cql(c) => node.run(c, o),
        Statement::Error(code, msg) => (opcode::ERROR, error_body(*code, msg)),
    }
}

/// Answers one request frame: `(opcode, body)`.
fn answer(node: &Node, f: &Frame) -> (u8, Vec<u8>) {
    let mut r = Reader::new(&f.body);
    match f.opcode {
        opcode::OPTIONS => {
            let mut w = Writer::new();
            w.string_multimap(&[("CQL_VERSION", &["3.0.0"]), ("COMPRESSION", &[])]);
            (opcode::SUPPORTED, w.buf)
        }
        opcode::STARTUP | opcode::REGISTER => (opcode::READY, Vec::new()),
        opcode::QUERY => match r
            .long_string()
            .and_then(|q| Ok((q, query_options(&mut r)?)))
        {
            Ok((q, o)) => response(node, &node.statement(&q), &o),
            Err(e) => (opcode::ERROR, error_body(error_code::PROTOCOL, e.0)),
        },
        opcode::PREPARE => match r.long_string() {
            Ok(q) => {
                let st = node.statement(&q);
                if let Statement::Error(..) = st {
                    return response(node, &st, &Options::default());
                }
                let id = stable_id(&normalize(&q));
                node.prepared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone(), (q, st.clone()));
                (opcode::RESULT, prepared_body(&id, &st))
            }
            Err(e) => (opcode::ERROR, error_body(error_code::PROTOCOL, e.0)),
        },
        opcode::EXECUTE => {
            let Ok(id) = r.short_bytes() else {
                return (
                    opcode::ERROR,
                    error_body(error_code::PROTOCOL, "EXECUTE without an id"),
                );
            };
            let found = node
                .prepared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .map(|(_, st)| st.clone());
            let Ok(o) = query_options(&mut r) else {
                return (
                    opcode::ERROR,
                    error_body(error_code::PROTOCOL, "malformed EXECUTE options"),
                );
            };
            match found {
                Some(st) => response(node, &st, &o),
                None => {
                    let mut w = Writer::new();
                    w.int(error_code::UNPREPARED)
                        .string("unknown prepared statement")
                        .short_bytes(&id);
                    (opcode::ERROR, w.buf)
                }
            }
        }
        opcode::BATCH => batch(node, &mut r)
            .unwrap_or_else(|e| (opcode::ERROR, error_body(error_code::PROTOCOL, e.0))),
        other => (
            opcode::ERROR,
            error_body(
                error_code::PROTOCOL,
                &format!("opcode {other:#x} is not served"),
            ),
        ),
    }
}

/// Executes a BATCH: `<type><n>(<kind><query|id><n values><values>)*<consistency><flags>...`.
/// Statements run in order; the first failure is returned (the double has no rollback: the
/// adapter batches only within one partition, where Cassandra applies a batch atomically,
/// and fault injection fails a batch before any statement runs).
fn batch(node: &Node, r: &mut Reader<'_>) -> Result<(u8, Vec<u8>), Malformed> {
    let _kind = r.byte()?;
    let n = r.short()?;
    let mut items = Vec::new();
    for _ in 0..n {
        let st = match r.byte()? {
            0 => node.statement(&r.long_string()?),
            _ => {
                let id = r.short_bytes()?;
                match lock(&node.prepared).get(&id).map(|(_, st)| st.clone()) {
                    Some(st) => st,
                    None => {
                        let mut w = Writer::new();
                        w.int(error_code::UNPREPARED)
                            .string("unknown prepared statement")
                            .short_bytes(&id);
                        return Ok((opcode::ERROR, w.buf));
                    }
                }
            }
        };
        let nv = r.short()?;
        let mut values = Vec::new();
        for _ in 0..nv {
            values.push(r.bytes()?);
        }
        items.push((st, values));
    }
    let _consistency = r.short()?;
    let flags = r.byte()?;
    let mut timestamp = None;
    if flags & 0x10 != 0 {
        let _serial = r.short()?;
    }
    if flags & 0x20 != 0 {
        timestamp = Some(r.long()?);
    }
    if let Some(f) = lock(&node.faults).pop_front() {
        return Ok((opcode::ERROR, f.body()));
    }
    for (st, values) in items {
        let o = Options {
            values,
            timestamp,
            ..Options::default()
        };
        let Statement::Cql(c) = st else {
            return Ok(response(node, &st, &o));
        };
        let (op, body) = match lock(&node.engine).execute(&c.stmt, &o, now_us()) {
            Ok(_) => (opcode::RESULT, Vec::new()),
            Err(e) => (opcode::ERROR, error_body(error_code::INVALID, &e)),
        };
        if op == opcode::ERROR {
            return Ok((op, body));
        }
    }
    let mut w = Writer::new();
    w.int(0x0001);
    Ok((opcode::RESULT, w.buf))
}

/// A 16-byte id derived from the statement text (the same text gets the same id on every
/// connection, as the driver requires).
fn stable_id(q: &str) -> Vec<u8> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut a = DefaultHasher::new();
    q.hash(&mut a);
    let mut b = DefaultHasher::new();
    (q, 1u8).hash(&mut b);
    let mut id = a.finish().to_be_bytes().to_vec();
    id.extend_from_slice(&b.finish().to_be_bytes());
    id
}

async fn serve_connection(node: Arc<Node>, stream: TcpStream, mut stop: watch::Receiver<bool>) {
    let (mut rd, mut wr) = stream.into_split();
    loop {
        let f = tokio::select! {
            f = frame::read_frame(&mut rd) => f,
            _ = stop.changed() => return,
        };
        let Ok(Some(f)) = f else {
            return;
        };
        let delay = node.latency_ms.load(Ordering::Relaxed);
        if delay > 0 && matches!(f.opcode, opcode::QUERY | opcode::EXECUTE | opcode::BATCH) {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let (op, body) = answer(&node, &f);
        if frame::write_frame(&mut wr, f.stream, op, &body)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A running CQL test double. Stops when dropped.
#[derive(Debug)]
pub struct CqlDouble {
    addr: SocketAddr,
    node: Arc<Node>,
    stop: watch::Sender<bool>,
}

/// The real CQL node for a test that needs a database but no injected faults:
/// `SCYLLA_URI` (Cassandra in CI), and a keyspace name no other test uses. `None` on a
/// developer machine without one, after saying "ignored: needs SCYLLA_URI" where `cargo
/// test` shows it; under `CI` a missing `SCYLLA_URI` fails the test.
pub fn node(test: &str) -> Option<(String, String)> {
    let uri = crate::service_from_env("SCYLLA_URI", test)?;
    Some((uri, crate::unique_name("fg").replace('-', "_")))
}

impl CqlDouble {
    /// Starts a double on an ephemeral port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seed = RandomState::new();
        let mut host_id = [0u8; 16];
        host_id[..8].copy_from_slice(&seed.hash_one(1u8).to_be_bytes());
        host_id[8..].copy_from_slice(&seed.hash_one(2u8).to_be_bytes());
        host_id[6] = (host_id[6] & 0x0F) | 0x40; // a version-4 uuid
        host_id[8] = (host_id[8] & 0x3F) | 0x80;
        let mut schema_version = host_id;
        schema_version[0] ^= 0xFF;
        let node = Arc::new(Node {
            addr,
            host_id,
            schema_version,
            prepared: Mutex::new(HashMap::new()),
            engine: Mutex::new(Engine::default()),
            faults: Mutex::new(VecDeque::new()),
            latency_ms: AtomicU64::new(0),
        });
        let (stop, rx) = watch::channel(false);
        let served = node.clone();
        tokio::spawn(async move {
            let node = served;
            let mut stop_rx = rx.clone();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(serve_connection(node.clone(), stream, rx.clone()));
                    }
                    _ = stop_rx.changed() => return,
                }
            }
        });
        Ok(CqlDouble { addr, node, stop })
    }

    /// Fails the next `times` CQL requests (QUERY, EXECUTE or BATCH of the subset; not the
    /// driver's system queries) with `fault`.
    pub fn inject(&self, fault: Fault, times: usize) {
        lock(&self.node.faults).extend(std::iter::repeat_n(fault, times));
    }

    /// Faults still waiting to be injected.
    pub fn pending_faults(&self) -> usize {
        lock(&self.node.faults).len()
    }

    /// Every text value stored in the double's tables, one per line.
    pub fn dump_text(&self) -> String {
        lock(&self.node.engine).dump_text()
    }

    /// [`CqlDouble::dump_text`] as a function that can outlive the borrow.
    pub fn dump_handle(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let node = self.node.clone();
        move || lock(&node.engine).dump_text()
    }

    /// Delays every QUERY, EXECUTE and BATCH answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.node
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// The address to give the driver as its known node.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for CqlDouble {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
