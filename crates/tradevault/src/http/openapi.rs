//! The OpenAPI 3 document, generated from the route table and the field tables, so it says what
//! the code does.

use serde_json::{Map, Value, json};

use super::{BodySpec, routes};
use crate::api::{Field, Kind, Range};

/// The whole document served at `/openapi.json`.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in routes() {
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        let mut parameters: Vec<Value> = path_params(route.path)
            .into_iter()
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        parameters.extend(route.query.iter().map(|f| {
            json!({ "name": f.name, "in": "query", "required": false, "description": f.doc, "schema": query_schema(f) })
        }));
        let mut op = json!({
            "summary": route.summary,
            "operationId": operation_id(route.method, route.path),
            "parameters": parameters,
                        "responses": responses(route.path, route.ok),
        });
        if let Some(body) = route.body {
            let schema = match body {
                BodySpec::One(fields) => object_schema(fields),
                BodySpec::OneOrBatch(fields) => json!({
                    "oneOf": [
                        object_schema(fields),
                        { "type": "array", "minItems": 1, "items": object_schema(fields),
                          "description": "A batch: stored all-or-nothing, answered with an array in the same order." }
                    ]
                }),
            };
            op["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": schema } } });
        }
        entry[route.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "TradeVault",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A durable trading store. Decimals are accepted as strings or numbers and returned as strings. \
                            Reads see production rows unless test_mode=true or all. Lists page with limit and cursor (next_cursor)."
        },
        "paths": paths,
        "components": { "schemas": { "Error": error_schema() } },
    })
}

fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.push_str(&seg.replace(['{', '}'], "").replace(['.', '-'], "_"));
    }
    id
}

fn responses(path: &str, ok: u16) -> Value {
    let err = json!({ "description": "Error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let success = if path == "/metrics" {
        "text/plain"
    } else {
        "application/json"
    };
    let mut r = json!({
        ok.to_string(): { "description": "Success", "content": { success: { "schema": {} } } },
        "400": err.clone(), "404": err.clone(), "409": err.clone(), "413": err.clone(), "422": err.clone(), "503": err,
    });
    if ok == 201 {
        r["200"] = json!({ "description": "Identical re-send: the stored original, nothing written",
                           "content": { "application/json": { "schema": {} } } });
    }
    r
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": { "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": { "type": "string" },
                "message": { "type": "string" },
                "field": { "type": "string", "nullable": true }
            }
        }}
    })
}

/// The JSON schema of a request object.
pub fn object_schema(fields: &[Field]) -> Value {
    let mut props = Map::new();
    for f in fields {
        let mut s = field_schema(f.kind);
        s["description"] = Value::String(f.doc.to_owned());
        if !f.required {
            // null is accepted as "not given".
            s["nullable"] = Value::Bool(true);
        }
        props.insert(f.name.to_owned(), s);
    }
    let required: Vec<&str> = fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    json!({ "type": "object", "additionalProperties": false, "required": required, "properties": props })
}

fn field_schema(kind: Kind) -> Value {
    match kind {
        Kind::Id => json!({ "type": "string", "minLength": 1, "maxLength": 128 }),
        Kind::Text { max } | Kind::LongText { max } => {
            json!({ "type": "string", "minLength": 1, "maxLength": max })
        }
        Kind::Decimal(range) => {
            let range_doc = match range {
                Range::Positive => "greater than 0",
                Range::NonNegative => "0 or more",
                Range::UnitInterval => "from 0 to 1",
            };
            json!({ "oneOf": [{ "type": "string" }, { "type": "number" }], "x-decimal": range_doc })
        }
        Kind::Timestamp => json!({ "type": "string", "format": "date-time" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::OneOf(values) => json!({ "type": "string", "enum": values }),
        Kind::Object => json!({ "type": "object" }),
        Kind::Any => json!({}),
        Kind::Count => json!({ "type": "integer", "minimum": 1 }),
        Kind::Cursor => json!({ "type": "string" }),
    }
}

fn query_schema(f: &Field) -> Value {
    match f.kind {
        Kind::Decimal(_) => json!({ "type": "string" }),
        other => field_schema(other),
    }
}
