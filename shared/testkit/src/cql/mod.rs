//! The CQL test double: a CQL native protocol v4 server on 127.0.0.1 that the real
//! `scylla` driver connects to, so the ScyllaDB adapter is tested through the real driver
//! on a machine without ScyllaDB.
//!
//! **What it models today (first step):** the connection handshake the driver performs
//! (OPTIONS → SUPPORTED without any `SCYLLA_*` key, so the driver treats it as one plain
//! Cassandra-protocol node; STARTUP → READY; REGISTER → READY), the metadata queries the
//! driver prepares and executes while building a session (`system.local` as one node that
//! owns token 0 at the listening address, an empty `system.peers`, empty
//! `system_schema` tables, `Invalid` for the Scylla-only schema tables, which the driver
//! tolerates), and the schema-agreement query. Multiplexed stream ids are answered on the
//! stream they came on.
//!
//! **What it does not model (yet):** the project's own statements. Every statement it does
//! not recognise gets a CQL `Syntax_error` (0x2000) naming the statement — never a silent
//! success — so an adapter that sends something new fails loudly here. Executing the
//! adapter's statements against in-memory tables, paging, BATCH, and fault injection
//! (write timeout, unavailable, overloaded, latency) come with the ScyllaDB adapter. Not
//! modelled at all: authentication, compression, tracing, events, multiple nodes or
//! shards, consistency levels, lightweight-transaction semantics beyond what the adapter
//! uses.

pub mod frame;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use frame::{Frame, Reader, Writer, opcode};

/// CQL error codes used by the double.
#[allow(missing_docs)]
pub mod error_code {
    pub const PROTOCOL: i32 = 0x000A;
    pub const SYNTAX: i32 = 0x2000;
    pub const INVALID: i32 = 0x2200;
    pub const UNPREPARED: i32 = 0x2500;
}

/// CQL type option ids.
mod ty {
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

/// What a statement does in the double.
#[derive(Debug, Clone)]
enum Statement {
    Rows(Canned),
    Error(i32, String),
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

    /// What a statement does: a system query, or a syntax error naming it.
    fn statement(&self, query: &str) -> Statement {
        self.system_statement(query).unwrap_or_else(|| {
            Statement::Error(
                error_code::SYNTAX,
                format!(
                    "the CQL test double does not understand: {}",
                    normalize(query)
                ),
            )
        })
    }
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
    // Bind variables: none (the system statements take no values).
    w.int(0).int(0).int(0);
    match statement {
        Statement::Rows(c) => {
            w.int(0x0001).int(c.columns.len() as i32);
            w.string(c.keyspace).string(c.table);
            for (name, t) in &c.columns {
                w.string(name);
                t.write(&mut w);
            }
        }
        Statement::Error(..) => {
            w.int(0x0004).int(0); // no result metadata
        }
    }
    w.buf
}

fn response(st: &Statement) -> (u8, Vec<u8>) {
    match st {
        Statement::Rows(c) => (opcode::RESULT, rows_body(c)),
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
        opcode::QUERY => match r.long_string() {
            Ok(q) => response(&node.statement(&q)),
            Err(e) => (opcode::ERROR, error_body(error_code::PROTOCOL, e.0)),
        },
        opcode::PREPARE => match r.long_string() {
            Ok(q) => {
                let st = node.statement(&q);
                if let Statement::Error(..) = st {
                    return response(&st);
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
            match found {
                Some(st) => response(&st),
                None => {
                    let mut w = Writer::new();
                    w.int(error_code::UNPREPARED)
                        .string("unknown prepared statement")
                        .short_bytes(&id);
                    (opcode::ERROR, w.buf)
                }
            }
        }
        opcode::BATCH => (
            opcode::ERROR,
            error_body(
                error_code::SYNTAX,
                "the CQL test double does not execute BATCH yet",
            ),
        ),
        other => (
            opcode::ERROR,
            error_body(
                error_code::PROTOCOL,
                &format!("opcode {other:#x} is not served"),
            ),
        ),
    }
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
    stop: watch::Sender<bool>,
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
        });
        let (stop, rx) = watch::channel(false);
        tokio::spawn(async move {
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
        Ok(CqlDouble { addr, stop })
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
