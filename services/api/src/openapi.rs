//! The OpenAPI 3 document of the API, served at `/openapi.json`.
//!
//! Built from one table of operations ([`OPERATIONS`]). Two tests keep it true both ways:
//! one requests every documented operation against the real routes, the other finds every
//! route the sources register in the table.

use actix_web::HttpResponse;
use serde_json::{Value, json};

/// One operation: method, path, summary, required scope ("" for none), request schema.
pub const OPERATIONS: &[(&str, &str, &str, &str, Option<&str>)] = &[
    (
        "post",
        "/applications",
        "Create an application (bootstrap admin only)",
        "admin",
        Some("Application"),
    ),
    ("get", "/applications/{app}", "An application", "read", None),
    (
        "post",
        "/applications/{app}/tokens",
        "Create an API token; its secret is returned once",
        "admin",
        Some("ApiTokenIn"),
    ),
    (
        "delete",
        "/applications/{app}/tokens/{token}",
        "Revoke an API token (by its hash)",
        "admin",
        None,
    ),
    (
        "post",
        "/applications/{app}/devices",
        "Create a device (with its attribute definitions)",
        "admin",
        Some("Device"),
    ),
    (
        "get",
        "/applications/{app}/devices",
        "List devices (`after`, `limit`)",
        "read",
        None,
    ),
    (
        "get",
        "/applications/{app}/devices/{id}",
        "A device",
        "read",
        None,
    ),
    (
        "put",
        "/applications/{app}/devices/{id}",
        "Create or replace a device",
        "admin",
        Some("Device"),
    ),
    (
        "delete",
        "/applications/{app}/devices/{id}",
        "Delete a device with its credentials and attributes",
        "admin",
        None,
    ),
    (
        "put",
        "/applications/{app}/devices/{id}/attributes",
        "Replace the attribute definitions (Losant)",
        "admin",
        Some("AttributeDefs"),
    ),
    (
        "get",
        "/applications/{app}/devices/{id}/attributes",
        "The attribute definitions",
        "read",
        None,
    ),
    (
        "post",
        "/applications/{app}/devices/{id}/tokens",
        "Create a ThingsBoard access token; returned once",
        "admin",
        None,
    ),
    (
        "post",
        "/applications/{app}/keys",
        "Create a Losant access key; its secret is returned once",
        "admin",
        Some("AccessKeyIn"),
    ),
    (
        "get",
        "/applications/{app}/keys/{key}",
        "An access key (never its secret)",
        "read",
        None,
    ),
    (
        "patch",
        "/applications/{app}/keys/{key}",
        "Deactivate/activate a key, allow custom topics",
        "admin",
        Some("AccessKeyPatch"),
    ),
    (
        "post",
        "/auth/device",
        "Losant: exchange a device's key and secret for a device token",
        "",
        Some("DeviceAuth"),
    ),
    (
        "post",
        "/applications/{app}/devices/{id}/state",
        "Losant: post one state or an array (device token, or write)",
        "write",
        Some("LosantState"),
    ),
    (
        "post",
        "/applications/{app}/devices/{id}/command",
        "Losant: send a command",
        "write",
        Some("LosantCommand"),
    ),
    (
        "post",
        "/applications/{app}/devices/{id}/attributes/shared",
        "Set shared attributes: stored, pushed to the device (or through its gateway) if it is online; an offline device gets what changed while it was away when it subscribes to its attribute updates again",
        "write",
        Some("Object"),
    ),
    (
        "post",
        "/api/rpc/oneway/{id}",
        "ThingsBoard: one-way RPC (`?application=` with the admin token)",
        "write",
        Some("Rpc"),
    ),
    (
        "post",
        "/api/rpc/twoway/{id}",
        "ThingsBoard: two-way RPC; waits up to `timeout` ms, 504 without reply",
        "write",
        Some("Rpc"),
    ),
    (
        "post",
        "/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE",
        "ThingsBoard: set shared attributes (pushed as the route above)",
        "write",
        Some("Object"),
    ),
    (
        "get",
        "/applications/{app}/devices/{id}/rpc/requests",
        "The device's client-side RPC requests, newest first (`status`: pending, answered, timed_out; `limit`)",
        "read",
        None,
    ),
    (
        "get",
        "/applications/{app}/devices/{id}/rpc/requests/{rpc}",
        "One client-side RPC request",
        "read",
        None,
    ),
    (
        "post",
        "/applications/{app}/devices/{id}/rpc/requests/{rpc}/answer",
        "Answer a pending client-side RPC with the JSON body, sent to the device; 409 if it was answered or timed out",
        "write",
        Some("Object"),
    ),
    (
        "post",
        "/applications/{app}/devices/{id}/claim",
        "Claim a device within the claiming window it opened, with its secret; 403 wrong secret, 409 no open window or another owner",
        "write",
        Some("Claim"),
    ),
    (
        "get",
        "/applications/{app}/devices/{id}/claim",
        "A device's owner and whether its claiming window is open",
        "read",
        None,
    ),
    (
        "delete",
        "/applications/{app}/devices/{id}/claim",
        "Unclaim a device; 404 if it has no owner",
        "write",
        None,
    ),
    (
        "post",
        "/api/customer/device/{deviceName}/claim",
        "ThingsBoard: claim a device by name (`?application=` with the admin token)",
        "write",
        Some("Claim"),
    ),
    (
        "delete",
        "/api/customer/device/{deviceName}/claim",
        "ThingsBoard: unclaim a device by name",
        "write",
        None,
    ),
    (
        "get",
        "/applications/{app}/devices/{id}/data",
        "Time series (`keys`, `from`, `to`, `limit`, `order`, `page`)",
        "read",
        None,
    ),
    (
        "get",
        "/applications/{app}/devices/{id}/state",
        "Latest value of each key (`keys`)",
        "read",
        None,
    ),
    (
        "get",
        "/applications/{app}/devices/{id}/attributes/{scope}",
        "Client or shared attributes (`keys`)",
        "read",
        None,
    ),
    (
        "get",
        "/applications/{app}/devices/{id}/connection",
        "Connected or not, and the connection log",
        "read",
        None,
    ),
    (
        "get",
        "/applications/{app}/devices/{id}/commands",
        "Commands of a device (`status`, `limit`)",
        "read",
        None,
    ),
    (
        "get",
        "/applications/{app}/commands/{command}",
        "A command with its status history",
        "read",
        None,
    ),
    (
        "get",
        "/applications/{app}/rejected",
        "The rejected log (`device`, `limit`)",
        "read",
        None,
    ),
];

fn schemas() -> Value {
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
        "Application": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "ttl_secs": {"type": "integer"}}},
        "ApiTokenIn": {"type": "object", "required": ["name", "scope"], "properties": {
            "name": {"type": "string"}, "scope": {"enum": ["read", "write", "admin"]}}},
        "Device": {"type": "object", "properties": {
            "id": {"type": "string"}, "name": {"type": "string"},
            "kind": {"enum": ["standalone", "gateway", "peripheral"]},
            "peripheral_policy": {"type": "object", "properties": {
                "policy": {"enum": ["any_gateway", "specific_gateway"]}, "gateway": {"type": "string"}}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "profile": {"type": "string"},
            "attributes": {"$ref": "#/components/schemas/AttributeDefs"}}},
        "AttributeDefs": {"type": "array", "items": {"type": "object", "required": ["name", "kind"], "properties": {
            "name": {"type": "string"}, "kind": {"enum": ["number", "string", "boolean", "gps", "json"]}}}},
        "AccessKeyIn": {"type": "object", "properties": {
            "devices": {"type": "array", "items": {"type": "string"}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "custom_topics": {"type": "boolean"}}},
        "AccessKeyPatch": {"type": "object", "properties": {
            "active": {"type": "boolean"}, "custom_topics": {"type": "boolean"}}},
        "DeviceAuth": {"type": "object", "required": ["deviceId", "key", "secret"], "properties": {
            "deviceId": {"type": "string"}, "key": {"type": "string"}, "secret": {"type": "string"}}},
        "LosantState": {"oneOf": [{"$ref": "#/components/schemas/LosantStateOne"},
            {"type": "array", "items": {"$ref": "#/components/schemas/LosantStateOne"}}]},
        "LosantStateOne": {"type": "object", "required": ["data"], "properties": {
            "data": {"type": "object"}, "time": {}, "flowVersion": {"type": "string"}}},
        "LosantCommand": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "payload": {}, "time": {}}},
        "Rpc": {"type": "object", "required": ["method"], "properties": {
            "method": {"type": "string"}, "params": {}, "timeout": {"type": "integer"},
            "persistent": {"type": "boolean"}, "expirationTime": {"type": "integer"}}},
        "Claim": {"type": "object", "properties": {
            "secretKey": {"type": "string"}, "owner": {"type": "string"}}},
        "Object": {"type": "object"}
    })
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, scope, body) in OPERATIONS {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(param)
            .collect();
        let mut op = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "OK"},
                "400": {"description": "Invalid request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "401": {"description": "No or bad token"},
                "403": {"description": "Token of another application, or scope too low"},
                "404": {"description": "Not found"}
            }
        });
        if !scope.is_empty() {
            op["security"] = json!([{"bearer": []}]);
            op["x-scope"] = json!(scope);
        }
        if let Some(b) = body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{b}")}}}});
        }
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "fluxgate API", "version": env!("CARGO_PKG_VERSION")},
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
