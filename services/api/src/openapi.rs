//! The OpenAPI 3.1 document of the API, served at `/openapi.json`.
//!
//! Built from one table of operations ([`OPERATIONS`]): for each, its path and query
//! parameters with their types and id rules, its request body, its answer and every status
//! it can return. The same table answers 405 with `Allow` for a method a path does not
//! have ([`operations_at`], used by [`crate::gate`]), and says which operations need a
//! token. Tests keep it true both ways: one requests every documented operation against
//! the real routes, another finds every route the sources register in the table, and
//! schemathesis (`compat/schemathesis.sh`) checks the real answers against it.

use actix_web::HttpResponse;
use fluxgate_model::ids::{MAX_ID_BYTES, MAX_NAME_BYTES};
use serde_json::{Value, json};

/// A query parameter: name, schema (a key of [`param_schema`]), description.
pub type Query = (&'static str, &'static str, &'static str);

/// One operation of the API.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// Lowercase HTTP method.
    pub method: &'static str,
    /// Path template (`{name}` for a path parameter, as actix-web routes it).
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Scope the token needs: `read`, `write`, `admin`, `bootstrap` (the bootstrap admin
    /// token only); empty for an operation that takes no token.
    pub scope: &'static str,
    /// Query parameters.
    pub query: &'static [Query],
    /// Request body: a schema of `components/schemas`.
    pub body: Option<&'static str>,
    /// The success status.
    pub ok: u16,
    /// The success answer: a schema of `components/schemas`; `None` for no body.
    pub answer: Option<&'static str>,
    /// Every error status it can return.
    pub errors: &'static [u16],
}

/// Errors of an authenticated read of one application's path.
const READ: &[u16] = &[400, 401, 403, 404, 503];
/// Errors of an authenticated write with a JSON body that names an existing thing.
const WRITE: &[u16] = &[400, 401, 403, 404, 408, 413, 415, 503];

const LIMIT_1000: Query = (
    "limit",
    "u32",
    "Most items to return; taken as 1 to 1000 (values outside are clamped)",
);
const KEYS: Query = (
    "keys",
    "string",
    "Comma-separated attribute keys (blanks around a key are ignored); every key when absent",
);
const APPLICATION: Query = (
    "application",
    "app_id",
    "The application; required with the bootstrap admin token, and an application token's own application when absent",
);

/// Every operation of the API.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        method: "post",
        path: "/applications",
        summary: "Create an application (bootstrap admin token only)",
        scope: "bootstrap",
        query: &[],
        body: Some("ApplicationIn"),
        ok: 201,
        answer: Some("Application"),
        errors: &[400, 401, 403, 408, 409, 413, 415, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}",
        summary: "An application",
        scope: "read",
        query: &[],
        body: None,
        ok: 200,
        answer: Some("Application"),
        errors: READ,
    },
    Operation {
        method: "post",
        path: "/applications/{app}/tokens",
        summary: "Create an API token; its secret is returned once",
        scope: "admin",
        query: &[],
        body: Some("ApiTokenIn"),
        ok: 201,
        answer: Some("ApiTokenCreated"),
        errors: WRITE,
    },
    Operation {
        method: "delete",
        path: "/applications/{app}/tokens/{token}",
        summary: "Revoke an API token (by its hash, `token_hash`)",
        scope: "admin",
        query: &[],
        body: None,
        ok: 204,
        answer: None,
        errors: READ,
    },
    Operation {
        method: "post",
        path: "/applications/{app}/devices",
        summary: "Create a device (with its attribute definitions); its id is generated when the body has none",
        scope: "admin",
        query: &[],
        body: Some("DeviceIn"),
        ok: 201,
        answer: Some("Device"),
        errors: &[400, 401, 403, 404, 408, 409, 413, 415, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices",
        summary: "List devices by id, a page at a time",
        scope: "read",
        query: &[
            (
                "after",
                "device_id",
                "The `next` of the previous page: devices after this id",
            ),
            LIMIT_1000,
        ],
        body: None,
        ok: 200,
        answer: Some("DevicePage"),
        errors: &[400, 401, 403, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}",
        summary: "A device",
        scope: "read",
        query: &[],
        body: None,
        ok: 200,
        answer: Some("Device"),
        errors: READ,
    },
    Operation {
        method: "put",
        path: "/applications/{app}/devices/{id}",
        summary: "Create or replace a device",
        scope: "admin",
        query: &[],
        body: Some("DeviceIn"),
        ok: 200,
        answer: Some("Device"),
        errors: WRITE,
    },
    Operation {
        method: "delete",
        path: "/applications/{app}/devices/{id}",
        summary: "Delete a device with its credentials, attributes and data",
        scope: "admin",
        query: &[],
        body: None,
        ok: 204,
        answer: None,
        errors: READ,
    },
    Operation {
        method: "put",
        path: "/applications/{app}/devices/{id}/attributes",
        summary: "Replace the attribute definitions (Losant)",
        scope: "admin",
        query: &[],
        body: Some("AttributeDefs"),
        ok: 200,
        answer: Some("AttributeDefs"),
        errors: WRITE,
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}/attributes",
        summary: "The attribute definitions",
        scope: "read",
        query: &[],
        body: None,
        ok: 200,
        answer: Some("AttributeDefs"),
        errors: READ,
    },
    Operation {
        method: "post",
        path: "/applications/{app}/devices/{id}/tokens",
        summary: "Create a ThingsBoard access token; returned once (no body)",
        scope: "admin",
        query: &[],
        body: None,
        ok: 201,
        answer: Some("DeviceTokenCreated"),
        errors: READ,
    },
    Operation {
        method: "delete",
        path: "/applications/{app}/devices/{id}/tokens",
        summary: "Revoke every ThingsBoard access token of the device; its live sessions end",
        scope: "admin",
        query: &[],
        body: None,
        ok: 204,
        answer: None,
        errors: READ,
    },
    Operation {
        method: "post",
        path: "/applications/{app}/keys",
        summary: "Create a Losant access key; its secret is returned once",
        scope: "admin",
        query: &[],
        body: Some("AccessKeyIn"),
        ok: 201,
        answer: Some("AccessKeyCreated"),
        errors: WRITE,
    },
    Operation {
        method: "get",
        path: "/applications/{app}/keys/{key}",
        summary: "An access key (never its secret)",
        scope: "read",
        query: &[],
        body: None,
        ok: 200,
        answer: Some("AccessKey"),
        errors: READ,
    },
    Operation {
        method: "patch",
        path: "/applications/{app}/keys/{key}",
        summary: "Deactivate/activate a key, allow custom topics",
        scope: "admin",
        query: &[],
        body: Some("AccessKeyPatch"),
        ok: 200,
        answer: Some("AccessKey"),
        errors: WRITE,
    },
    Operation {
        method: "post",
        path: "/auth/device",
        summary: "Losant: exchange a device's id, access key and secret for a device token. Failures are answered later each time they repeat (`api.auth_failure_delay_ms`)",
        scope: "",
        query: &[],
        body: Some("DeviceAuth"),
        ok: 200,
        answer: Some("DeviceAuthToken"),
        errors: &[400, 401, 403, 408, 413, 415, 503],
    },
    Operation {
        method: "post",
        path: "/applications/{app}/devices/{id}/state",
        summary: "Losant: post one state or an array (a device token of the device or of a gateway it allows, or a write token); 200 once the bus has it",
        scope: "write",
        query: &[],
        body: Some("LosantState"),
        ok: 200,
        answer: Some("Success"),
        errors: &[400, 401, 403, 408, 413, 422, 503],
    },
    Operation {
        method: "post",
        path: "/applications/{app}/devices/{id}/command",
        summary: "Losant: send a command",
        scope: "write",
        query: &[],
        body: Some("LosantCommand"),
        ok: 200,
        answer: Some("CommandAccepted"),
        errors: WRITE,
    },
    Operation {
        method: "post",
        path: "/applications/{app}/devices/{id}/attributes/shared",
        summary: "Set shared attributes: stored, pushed to the device (or through its gateway) if it is online; an offline device gets what changed while it was away when it subscribes to its attribute updates again",
        scope: "write",
        query: &[],
        body: Some("SharedAttributes"),
        ok: 200,
        answer: Some("Success"),
        errors: &[400, 401, 403, 404, 408, 413, 415, 422, 503],
    },
    Operation {
        method: "post",
        path: "/api/rpc/oneway/{id}",
        summary: "ThingsBoard: one-way RPC; answered with its id once the bus has it",
        scope: "write",
        query: &[APPLICATION],
        body: Some("Rpc"),
        ok: 200,
        answer: Some("RpcAccepted"),
        errors: WRITE,
    },
    Operation {
        method: "post",
        path: "/api/rpc/twoway/{id}",
        summary: "ThingsBoard: two-way RPC; answered with the device's reply, waiting up to `timeout` ms (at most `api.rpc_timeout_max_ms`), 504 without one. A persistent one is answered with its id at once",
        scope: "write",
        query: &[APPLICATION],
        body: Some("Rpc"),
        ok: 200,
        answer: Some("RpcReply"),
        errors: &[400, 401, 403, 404, 408, 413, 415, 503, 504],
    },
    Operation {
        method: "post",
        path: "/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE",
        summary: "ThingsBoard: set shared attributes (pushed as by `POST .../attributes/shared`)",
        scope: "write",
        query: &[APPLICATION],
        body: Some("SharedAttributes"),
        ok: 200,
        answer: Some("Success"),
        errors: &[400, 401, 403, 404, 408, 413, 415, 422, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}/rpc/requests",
        summary: "The device's client-side RPC requests, newest first",
        scope: "read",
        query: &[
            (
                "status",
                "client_rpc_status",
                "Only requests with this status",
            ),
            LIMIT_1000,
        ],
        body: None,
        ok: 200,
        answer: Some("ClientRpcList"),
        errors: &[400, 401, 403, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}/rpc/requests/{rpc}",
        summary: "One client-side RPC request",
        scope: "read",
        query: &[],
        body: None,
        ok: 200,
        answer: Some("ClientRpc"),
        errors: READ,
    },
    Operation {
        method: "post",
        path: "/applications/{app}/devices/{id}/rpc/requests/{rpc}/answer",
        summary: "Answer a pending client-side RPC with the JSON body, sent to the device; 409 if it was answered or timed out",
        scope: "write",
        query: &[],
        body: Some("AnyJson"),
        ok: 200,
        answer: Some("ClientRpc"),
        errors: &[400, 401, 403, 404, 408, 409, 413, 415, 503],
    },
    Operation {
        method: "post",
        path: "/applications/{app}/devices/{id}/claim",
        summary: "Claim a device within the claiming window it opened, with its secret; 403 wrong secret, 409 no open window or another owner",
        scope: "write",
        query: &[],
        body: Some("Claim"),
        ok: 200,
        answer: Some("Claimed"),
        errors: &[400, 401, 403, 404, 408, 409, 413, 415, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}/claim",
        summary: "A device's owner and whether its claiming window is open",
        scope: "read",
        query: &[],
        body: None,
        ok: 200,
        answer: Some("ClaimStatus"),
        errors: READ,
    },
    Operation {
        method: "delete",
        path: "/applications/{app}/devices/{id}/claim",
        summary: "Unclaim a device; 404 if it has no owner",
        scope: "write",
        query: &[],
        body: None,
        ok: 200,
        answer: Some("Unclaimed"),
        errors: READ,
    },
    Operation {
        method: "post",
        path: "/api/customer/device/{deviceName}/claim",
        summary: "ThingsBoard: claim a device by name",
        scope: "write",
        query: &[APPLICATION],
        body: Some("Claim"),
        ok: 200,
        answer: Some("Claimed"),
        errors: &[400, 401, 403, 404, 408, 409, 413, 415, 503],
    },
    Operation {
        method: "delete",
        path: "/api/customer/device/{deviceName}/claim",
        summary: "ThingsBoard: unclaim a device by name",
        scope: "write",
        query: &[APPLICATION],
        body: None,
        ok: 200,
        answer: Some("Unclaimed"),
        errors: READ,
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}/data",
        summary: "Time series in the window [`from`, `to`): `from` inclusive, `to` exclusive; a page at a time",
        scope: "read",
        query: &[
            KEYS,
            (
                "from",
                "i64",
                "Window start, epoch ms, inclusive (default: 24 h before `to`); not after `to`",
            ),
            (
                "to",
                "i64",
                "Window end, epoch ms, exclusive: a point at exactly `to` is not in the window (default: now)",
            ),
            (
                "limit",
                "u32",
                "Points per page; taken as 1 to 10000 (values outside are clamped; default 1000)",
            ),
            ("order", "order", "By time: `asc` (default) or `desc`"),
            (
                "page",
                "string",
                "The `next` of the previous page, with the same other parameters",
            ),
        ],
        body: None,
        ok: 200,
        answer: Some("PointPage"),
        errors: &[400, 401, 403, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}/state",
        summary: "Latest value of each key",
        scope: "read",
        query: &[KEYS],
        body: None,
        ok: 200,
        answer: Some("Latest"),
        errors: &[400, 401, 403, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}/attributes/{scope}",
        summary: "Client attributes (`{scope}`: `client`; shared ones have their own path)",
        scope: "read",
        query: &[KEYS],
        body: None,
        ok: 200,
        answer: Some("AttributeValues"),
        errors: &[400, 401, 403, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}/attributes/shared",
        summary: "Shared attributes",
        scope: "read",
        query: &[KEYS],
        body: None,
        ok: 200,
        answer: Some("AttributeValues"),
        errors: &[400, 401, 403, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}/connection",
        summary: "Connected or not, and the connection log, newest first",
        scope: "read",
        query: &[(
            "limit",
            "u32",
            "Most log entries; taken as 1 to 1000 (values outside are clamped; default 20)",
        )],
        body: None,
        ok: 200,
        answer: Some("Connection"),
        errors: &[400, 401, 403, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/devices/{id}/commands",
        summary: "Commands of a device, newest first",
        scope: "read",
        query: &[
            ("status", "command_status", "Only commands with this status"),
            LIMIT_1000,
        ],
        body: None,
        ok: 200,
        answer: Some("CommandList"),
        errors: &[400, 401, 403, 503],
    },
    Operation {
        method: "get",
        path: "/applications/{app}/commands/{command}",
        summary: "A command with its status history",
        scope: "read",
        query: &[],
        body: None,
        ok: 200,
        answer: Some("CommandWithHistory"),
        errors: READ,
    },
    Operation {
        method: "get",
        path: "/applications/{app}/rejected",
        summary: "The rejected log, newest first",
        scope: "read",
        query: &[
            ("device", "string", "Only entries of this device"),
            LIMIT_1000,
        ],
        body: None,
        ok: 200,
        answer: Some("RejectedList"),
        errors: &[400, 401, 403, 503],
    },
];

/// Whether `path` (a request's, percent-encoded) matches the template `template`: the same
/// segments, a `{name}` segment matching any non-empty one (as actix-web's router does).
fn matches(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                let ok = if ts.starts_with('{') {
                    !ps.is_empty()
                } else {
                    ts == ps
                };
                if !ok {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The operations whose path template matches `path`, whatever their method.
pub fn operations_at(path: &str) -> Vec<&'static Operation> {
    OPERATIONS
        .iter()
        .filter(|op| matches(op.path, path))
        .collect()
}

/// The `Allow` header of a path with these operations.
pub fn allow(ops: &[&Operation]) -> String {
    let mut methods: Vec<String> = ops.iter().map(|op| op.method.to_uppercase()).collect();
    methods.sort();
    methods.dedup();
    methods.join(", ")
}

/// An application or device id: ASCII letters, digits and `._-:@~`
/// (`fluxgate_model::ids`).
const ID_PATTERN: &str = r"^[A-Za-z0-9._:@~-]+$";

/// A device name (ThingsBoard): printable text without `+`, `#`, control, bidirectional
/// or invisible characters, not blank nor edged with white space (`fluxgate_model::ids`).
const NAME_PATTERN: &str = r"^[^\s+#\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb](?:[^+#\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*[^\s+#\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb])?$";

/// A 128-bit id: 32 hex digits, or a UUID's 36 characters.
const MESSAGE_ID_PATTERN: &str = r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$";

fn id_schema(what: &str) -> Value {
    json!({
        "type": "string", "minLength": 1, "maxLength": MAX_ID_BYTES, "pattern": ID_PATTERN,
        "description": format!(
            "{what}: 1 to {MAX_ID_BYTES} ASCII letters, digits and `.` `_` `-` `:` `@` `~`"
        )
    })
}

/// The schema of a parameter kind named in [`OPERATIONS`] or a path parameter's name.
fn param_schema(kind: &str) -> Value {
    match kind {
        "app" | "app_id" => id_schema("An application id"),
        "id" | "device_id" => id_schema("A device id"),
        "deviceName" => json!({
            "type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES, "pattern": NAME_PATTERN,
            "description": format!("A device name: 1 to {MAX_NAME_BYTES} bytes of UTF-8 text, without `+`, `#`, control, bidirectional or invisible characters, not blank nor starting or ending with white space, compared after NFC normalization (`/` is allowed, sent as %2F)")
        }),
        "command" | "rpc" => json!({"type": "string", "pattern": MESSAGE_ID_PATTERN,
            "description": "A 128-bit id: 32 hex digits (as the API writes it) or a UUID"}),
        "token" => {
            json!({"type": "string", "minLength": 1, "description": "The token's `token_hash`"})
        }
        "key" => json!({"type": "string", "minLength": 1, "description": "The access key"}),
        "scope" => json!({"type": "string", "enum": ["client"]}),
        "u32" => json!({"type": "integer", "minimum": 0, "maximum": u32::MAX}),
        "i64" => {
            json!({"type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX})
        }
        "order" => json!({"type": "string", "enum": ["asc", "desc"]}),
        "command_status" => json!({"type": "string", "enum":
            fluxgate_model::CommandStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()}),
        "client_rpc_status" => {
            json!({"type": "string", "enum": ["pending", "answered", "timed_out"]})
        }
        _ => json!({"type": "string"}),
    }
}

/// The nullable form of `schema` (OpenAPI 3.1: a `null` type beside it).
fn nullable(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn schemas() -> Value {
    let app_id = id_schema("An application id");
    let device_id = id_schema("A device id");
    let u32_ = json!({"type": "integer", "minimum": 0, "maximum": u32::MAX});
    let u64_ = json!({"type": "integer", "minimum": 0, "maximum": u64::MAX});
    let i64_ =
        json!({"type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX});
    let string = json!({"type": "string"});
    let iso = json!({"type": "string", "anyOf": [{"format": "date-time"}, {"format": "date"}]});
    let key = json!({"type": "string", "minLength": 1, "maxLength": 255,
        "description": "An attribute key: 1 to 255 bytes of UTF-8"});
    let message_id = json!({"type": "string", "pattern": "^[0-9a-f]{32}$"});
    let all = [
        (
            "Error",
            json!({"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable, snake_case"},
                "message": {"type": "string", "description": "What is wrong and what to do"},
                "field": {"type": "string", "description": "The path, query or body field at fault"}}}}}),
        ),
        (
            "ApplicationIn",
            json!({"type": "object", "required": ["id"], "additionalProperties": false, "properties": {
            "id": app_id, "name": nullable(string.clone()), "ttl_secs": nullable(u32_.clone())}}),
        ),
        (
            "Application",
            json!({"type": "object", "required": ["id", "name", "created_ms"], "properties": {
            "id": string, "name": string, "ttl_secs": nullable(u32_.clone()), "created_ms": i64_}}),
        ),
        (
            "ApiTokenIn",
            json!({"type": "object", "required": ["name", "scope"], "additionalProperties": false, "properties": {
            "name": string, "scope": {"type": "string", "enum": ["read", "write", "admin"]}}}),
        ),
        (
            "ApiTokenCreated",
            json!({"type": "object", "required": ["token_hash", "tenant", "scope", "name", "created_ms", "secret"], "properties": {
            "token_hash": string, "tenant": string, "scope": {"type": "string", "enum": ["read", "write", "admin"]},
            "name": string, "created_ms": i64_, "secret": {"type": "string", "description": "Shown once"}}}),
        ),
        (
            "PeripheralPolicy",
            json!({"oneOf": [
            {"type": "object", "required": ["policy"], "properties": {
                "policy": {"const": "any_gateway"}, "gateway": {"type": "null"}}},
            {"type": "object", "required": ["policy", "gateway"], "properties": {
                "policy": {"const": "specific_gateway"}, "gateway": device_id}}]}),
        ),
        (
            "DeviceKind",
            json!({"type": "string", "enum": ["standalone", "gateway", "peripheral"]}),
        ),
        (
            "DeviceIn",
            json!({
            "type": "object", "additionalProperties": false,
            "description": "A peripheral needs a `peripheral_policy`; other kinds have none",
            "properties": {
                "id": nullable(device_id.clone()), "name": nullable(string.clone()),
                "kind": r("DeviceKind"),
                "peripheral_policy": nullable(r("PeripheralPolicy")),
                "tags": {"type": "array", "items": string},
                "profile": nullable(string.clone()),
                "attributes": nullable(r("AttributeDefs"))},
            "if": {"required": ["kind"], "properties": {"kind": {"const": "peripheral"}}},
            "then": {"required": ["peripheral_policy"], "properties": {"peripheral_policy": r("PeripheralPolicy")}},
            "else": {"properties": {"peripheral_policy": {"type": "null"}}}}),
        ),
        (
            "Device",
            json!({"type": "object", "required": ["tenant", "id", "name", "kind", "tags", "created_ms", "updated_ms"], "properties": {
            "tenant": string, "id": string, "name": string, "kind": r("DeviceKind"),
            "peripheral_policy": nullable(r("PeripheralPolicy")),
            "tags": {"type": "array", "items": string}, "profile": nullable(string.clone()),
            "created_ms": i64_, "updated_ms": i64_}}),
        ),
        (
            "DevicePage",
            json!({"type": "object", "required": ["items", "next"], "properties": {
            "items": {"type": "array", "items": r("Device")},
            "next": {"type": ["string", "null"], "description": "`after` of the next page; null on the last"}}}),
        ),
        (
            "AttributeDefs",
            json!({"type": "array", "maxItems": 256, "items": {"type": "object", "required": ["name", "kind"], "properties": {
            "name": string, "kind": {"type": "string", "enum": ["number", "string", "boolean", "gps", "json"]}}}}),
        ),
        (
            "DeviceTokenCreated",
            json!({"type": "object", "required": ["token_hash", "tenant", "device", "secret"], "properties": {
            "token_hash": string, "tenant": string, "device": string, "secret": {"type": "string", "description": "The ThingsBoard access token; shown once"}}}),
        ),
        (
            "AccessKeyIn",
            json!({
            "type": "object", "additionalProperties": false,
            "description": "Opens every device of the application, or the listed `devices`, or those with one of the `tags`: not both",
            "properties": {
                "devices": nullable(json!({"type": "array", "items": device_id})),
                "tags": nullable(json!({"type": "array", "items": string})),
                "custom_topics": {"type": "boolean"}},
            "not": {"required": ["devices", "tags"], "properties": {
                "devices": {"type": "array"}, "tags": {"type": "array"}}}}),
        ),
        (
            "AccessKeyPatch",
            json!({"type": "object", "additionalProperties": false, "properties": {
            "active": {"type": ["boolean", "null"]}, "custom_topics": {"type": ["boolean", "null"]}}}),
        ),
        (
            "AccessKey",
            json!({"type": "object", "required": ["key", "application", "scope", "custom_topics", "active", "created_ms"], "properties": {
            "key": string, "application": string,
            "scope": {"type": "object", "required": ["scope"], "properties": {
                "scope": {"type": "string", "enum": ["all_devices", "devices", "tags"]},
                "values": {"type": "array", "items": string}}},
            "custom_topics": {"type": "boolean"}, "active": {"type": "boolean"}, "created_ms": i64_}}),
        ),
        (
            "AccessKeyCreated",
            json!({"allOf": [r("AccessKey"), {"type": "object", "required": ["secret"], "properties": {
            "secret": {"type": "string", "description": "Shown once"}}}]}),
        ),
        (
            "DeviceAuth",
            json!({"type": "object", "required": ["deviceId", "key", "secret"], "additionalProperties": false, "properties": {
            "deviceId": string, "key": string, "secret": string}}),
        ),
        (
            "DeviceAuthToken",
            json!({"type": "object", "required": ["applicationId", "deviceId", "deviceClass", "token", "expiresMs"], "properties": {
            "applicationId": string, "deviceId": string, "deviceClass": r("DeviceKind"),
            "token": string, "expiresMs": i64_}}),
        ),
        (
            "LosantState",
            json!({"oneOf": [r("LosantStateOne"),
            {"type": "array", "minItems": 1, "maxItems": 1000, "items": r("LosantStateOne")}]}),
        ),
        (
            "LosantStateOne",
            json!({
            "type": "object", "required": ["data"],
            "description": "Other fields are ignored. `time`: epoch ms or s, ISO-8601, or {\"$date\": ...}; the receive time when absent or unreadable",
            "properties": {
                "data": {"type": "object", "minProperties": 1, "maxProperties": 256, "propertyNames": key},
                "time": {}, "flowVersion": {"type": ["string", "null"]}}}),
        ),
        (
            "LosantCommand",
            json!({"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": {"type": "string", "minLength": 1},
            "payload": {},
            "time": nullable(json!({"anyOf": [
                i64_, iso,
                {"type": "object", "required": ["$date"], "properties": {"$date": iso}}]}))}}),
        ),
        (
            "CommandAccepted",
            json!({"type": "object", "required": ["success", "commandId"], "properties": {
            "success": {"const": true}, "commandId": message_id}}),
        ),
        (
            "SharedAttributes",
            json!({"type": "object", "maxProperties": 256, "propertyNames": key,
            "description": "Attribute values by key; a value is at most 64 KiB"}),
        ),
        (
            "Success",
            json!({"type": "object", "required": ["success"], "properties": {"success": {"const": true}}}),
        ),
        (
            "Rpc",
            json!({"type": "object", "required": ["method"], "additionalProperties": false, "properties": {
            "method": string, "params": {},
            "timeout": nullable(u64_.clone()),
            "persistent": {"type": "boolean"},
            "expirationTime": nullable(i64_.clone()),
            "retries": nullable(u32_),
            "additionalInfo": {}}}),
        ),
        (
            "RpcAccepted",
            json!({"type": "object", "required": ["rpcId"], "properties": {"rpcId": message_id}}),
        ),
        (
            "RpcReply",
            json!({"description": "The device's reply, any JSON (`{\"rpcId\"}` for a persistent RPC)"}),
        ),
        (
            "ClientRpc",
            json!({"type": "object", "required": ["id", "tenant", "device", "request_id", "method", "status", "created_ms", "deadline_ms", "updated_ms"], "properties": {
            "id": message_id, "tenant": string, "device": string,
            "request_id": {"type": ["integer", "string"]}, "method": string, "params": {},
            "status": {"type": "string", "enum": ["pending", "answered", "timed_out"]},
            "created_ms": i64_, "deadline_ms": i64_, "updated_ms": i64_, "answer": {}}}),
        ),
        (
            "ClientRpcList",
            json!({"type": "object", "required": ["items"], "properties": {
            "items": {"type": "array", "items": r("ClientRpc")}}}),
        ),
        ("AnyJson", json!({"description": "Any JSON value"})),
        (
            "Claim",
            json!({"type": "object", "additionalProperties": false, "properties": {
            "secretKey": {"type": "string", "description": "The secret the device set (empty when it set none)"},
            "owner": {"type": ["string", "null"], "minLength": 1, "maxLength": 256, "pattern": "\\S",
                "description": "1 to 256 bytes, not blank; the caller's token name when absent"}}}),
        ),
        (
            "Claimed",
            json!({"type": "object", "required": ["deviceId", "owner", "claimedMs", "response"], "properties": {
            "deviceId": string, "owner": {"type": ["string", "null"]}, "claimedMs": {"type": ["integer", "null"]},
            "response": {"type": "string", "enum": ["SUCCESS", "CLAIMED"]}}}),
        ),
        (
            "ClaimStatus",
            json!({"type": "object", "required": ["deviceId", "claimed", "owner", "claimedMs", "windowOpen", "windowUntilMs"], "properties": {
            "deviceId": string, "claimed": {"type": "boolean"}, "owner": {"type": ["string", "null"]},
            "claimedMs": {"type": ["integer", "null"]}, "windowOpen": {"type": "boolean"},
            "windowUntilMs": {"type": ["integer", "null"]}}}),
        ),
        (
            "Unclaimed",
            json!({"type": "object", "required": ["deviceId", "claimed"], "properties": {
            "deviceId": string, "claimed": {"const": false}}}),
        ),
        (
            "Point",
            json!({"type": "object", "required": ["device", "key", "ts_ms", "value"], "properties": {
            "device": string, "key": string, "ts_ms": i64_, "value": {}}}),
        ),
        (
            "PointPage",
            json!({"type": "object", "required": ["points", "next"], "properties": {
            "points": {"type": "array", "items": r("Point")},
            "next": {"type": ["string", "null"], "description": "`page` of the next page; null on the last"}}}),
        ),
        (
            "Latest",
            json!({"type": "object", "required": ["points"], "properties": {
            "points": {"type": "array", "items": r("Point")}}}),
        ),
        (
            "AttributeValues",
            json!({"type": "object", "description": "Attribute values by key"}),
        ),
        (
            "ConnectionEvent",
            json!({"type": "object", "required": ["tenant", "device", "at_ms", "connected"], "properties": {
            "tenant": string, "device": string, "at_ms": i64_, "connected": {"type": "boolean"},
            "front": {"type": ["string", "null"]}, "remote_addr": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"]}, "via": {"type": ["string", "null"]}}}),
        ),
        (
            "Connection",
            json!({"type": "object", "required": ["connected", "since_ms", "log"], "properties": {
            "connected": {"type": "boolean"}, "since_ms": {"type": ["integer", "null"]},
            "log": {"type": "array", "items": r("ConnectionEvent")}}}),
        ),
        (
            "CommandRecord",
            json!({"type": "object", "required": ["id", "tenant", "device", "command", "status", "created_ms", "updated_ms"], "properties": {
            "id": message_id, "tenant": string, "device": string,
            "command": {"type": "object", "required": ["name"], "properties": {"name": string}},
            "status": param_schema("command_status"),
            "created_ms": i64_, "updated_ms": i64_, "reply": {}}}),
        ),
        (
            "CommandList",
            json!({"type": "object", "required": ["items"], "properties": {
            "items": {"type": "array", "items": r("CommandRecord")}}}),
        ),
        (
            "CommandWithHistory",
            json!({"type": "object", "required": ["command", "history"], "properties": {
            "command": r("CommandRecord"),
            "history": {"type": "array", "items": {"type": "object", "required": ["status", "at_ms"], "properties": {
                "status": param_schema("command_status"), "at_ms": i64_, "detail": {"type": ["string", "null"]}}}}}}),
        ),
        (
            "RejectedEntry",
            json!({"type": "object", "required": ["tenant", "device", "at_ms", "code", "message", "excerpt"], "properties": {
            "tenant": string, "device": string, "at_ms": i64_, "code": string, "message": string, "excerpt": string}}),
        ),
        (
            "RejectedList",
            json!({"type": "object", "required": ["items"], "properties": {
            "items": {"type": "array", "items": r("RejectedEntry")}}}),
        ),
    ];
    Value::Object(all.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// What an error status means.
fn error_description(status: u16) -> &'static str {
    match status {
        400 => "Invalid path, query or body; `error.field` names the part at fault",
        401 => {
            "No token, or an unknown, expired or revoked one (answered before anything about the request is checked)"
        }
        403 => {
            "The token belongs to another application, its scope is too low, or (a device token) it does not reach this"
        }
        404 => "Not found",
        408 => "The body did not arrive within `api.request_timeout_ms`; the connection is closed",
        409 => "Conflicts with what exists",
        413 => "The body is larger than `api.max_body_bytes`",
        415 => "The body is not sent as `application/json`",
        422 => "Understood but refused (`error.code` says why)",
        503 => "The store or the bus is unavailable; retry",
        504 => "No reply in time",
        _ => "Error",
    }
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn operation(op: &Operation) -> Value {
    let mut params: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": param_schema(name)}))
        .collect();
    params.extend(op.query.iter().map(|(name, kind, description)| {
        json!({"name": name, "in": "query", "required": false, "description": description,
            "schema": param_schema(kind)})
    }));
    let mut responses = serde_json::Map::new();
    let ok = match op.answer {
        Some(schema) => json!({"description": "OK", "content": json_content(r(schema))}),
        None => json!({"description": "Done; no body"}),
    };
    responses.insert(op.ok.to_string(), ok);
    for status in op.errors {
        responses.insert(
            status.to_string(),
            json!({"description": error_description(*status), "content": json_content(r("Error"))}),
        );
    }
    let mut out = json!({
        "summary": op.summary,
        "operationId": format!("{}{}", op.method, op.path.replace(['{', '}'], "")),
        "parameters": params,
        "responses": responses,
    });
    if op.scope.is_empty() {
        out["security"] = json!([]);
    } else {
        out["security"] = json!([{"bearer": []}]);
        out["x-scope"] = json!(op.scope);
    }
    if let Some(b) = op.body {
        out["requestBody"] = json!({"required": true, "content": json_content(r(b))});
    }
    out
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for op in OPERATIONS {
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method] = operation(op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fluxgate API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Bearer tokens: the bootstrap admin token (every application), application API tokens (scopes read < write < admin) and Losant device tokens from `POST /auth/device` (their device's state only). Errors are `{\"error\": {\"code\", \"message\", \"field\"?}}`. A method a path does not have is answered 405 with `Allow`."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas()
        }
    })
}

pub(crate) async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_templates_segment_by_segment() {
        assert!(matches("/applications/{app}", "/applications/a1"));
        assert!(!matches("/applications/{app}", "/applications/"));
        assert!(!matches("/applications/{app}", "/applications/a1/x"));
        assert!(matches(
            "/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE",
            "/api/plugins/telemetry/DEVICE/d%2Fx/SHARED_SCOPE"
        ));
        let at = operations_at("/applications/a/devices/d/attributes/shared");
        assert_eq!(allow(&at), "GET, POST");
        assert_eq!(
            allow(&operations_at("/applications/a/devices/d")),
            "DELETE, GET, PUT"
        );
        assert!(operations_at("/metrics").is_empty());
    }

    #[test]
    fn every_operation_documents_its_statuses_and_parameters() {
        let doc = document();
        for op in OPERATIONS {
            let o = &doc["paths"][op.path][op.method];
            let responses = o["responses"].as_object().unwrap();
            assert!(responses.contains_key(&op.ok.to_string()));
            if !op.scope.is_empty() {
                assert!(responses.contains_key("401"), "{} {}", op.method, op.path);
            }
            if op.body.is_some() {
                assert!(responses.contains_key("408"), "{} {}", op.method, op.path);
            }
            for name in op.path.split('/').filter(|s| s.starts_with('{')) {
                let name = name.trim_matches(['{', '}']);
                assert!(
                    o["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == name),
                    "{} {}: {name}",
                    op.method,
                    op.path
                );
            }
        }
        let to = &doc["paths"]["/applications/{app}/devices/{id}/data"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "to")
            .unwrap()["description"];
        assert!(to.as_str().unwrap().contains("exclusive"), "{to}");
    }
}
