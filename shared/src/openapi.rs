//! The OpenAPI 3.1 document, generated from the route table so it cannot
//! drift from what is served.

use crate::routes::{Access, Route, ROUTES};
use serde_json::{json, Map, Value};

pub fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let entry = paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(ops) = entry {
            ops.insert(r.verb.as_str().to_ascii_lowercase(), operation(r));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Ledgerline API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Evidence vault with a tamper-evident ledger, and message delivery.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: ll_<scope>_<id>_<secret>"}
            },
            "schemas": {"Error": error_schema()},
            "responses": {"Error": {
                "description": "An error in the Ledgerline error contract",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            }}
        }
    })
}

fn operation(r: &Route) -> Value {
    let mut params: Vec<Value> = path_params(r.path)
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}))
        .collect();
    params.push(json!({"name": "X-Request-ID", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 128}}));
    if r.idempotent {
        params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255}}));
    }
    let mut responses = Map::new();
    let ok = match r.verb {
        crate::routes::Verb::Post => "201",
        _ => "200",
    };
    responses.insert(
        ok.into(),
        json!({"description": "Success", "content": {"application/json": {}}}),
    );
    responses.insert(
        "default".into(),
        json!({"$ref": "#/components/responses/Error"}),
    );
    let mut op = json!({
        "operationId": r.function,
        "summary": r.summary,
        "tags": [r.tag],
        "parameters": params,
        "responses": responses,
    });
    if r.access != Access::Public {
        op["security"] = json!([{"bearer": []}]);
    }
    if matches!(r.verb, crate::routes::Verb::Post | crate::routes::Verb::Put) {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {}}});
    }
    op
}

fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error_code", "message", "error_hint", "retryable", "retry_strategy", "error_id", "request_id"],
        "properties": {
            "error_code": {"type": "string"},
            "message": {"type": "string"},
            "error_hint": {"type": "string"},
            "retryable": {"type": "boolean"},
            "retry_strategy": {"enum": ["none", "immediate", "exponential_backoff", "after_retry_after"]},
            "error_id": {"type": "string"},
            "request_id": {"type": "string"}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once() {
        let doc = document();
        let mut n = 0;
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (verb, op) in ops.as_object().unwrap() {
                n += 1;
                let r = ROUTES
                    .iter()
                    .find(|r| r.path == path && r.verb.as_str().eq_ignore_ascii_case(verb))
                    .expect("documented route exists");
                assert_eq!(op["operationId"], r.function);
            }
        }
        assert_eq!(n, ROUTES.len());
    }
}
