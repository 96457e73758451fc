//! There is one list of routes. `template.yaml`, the OpenAPI document served
//! at /openapi.json, the function binaries and `events/` must all agree with
//! it; this test fails the moment one of them drifts.

use ledgerline::routes::{FALLBACK_FUNCTION, ROUTES};
use ledgerline_tests::TestServer;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn table() -> BTreeSet<(String, String, String)> {
    let mut t: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| {
            (
                r.function.to_string(),
                r.verb.as_str().to_string(),
                r.path.to_string(),
            )
        })
        .collect();
    t.insert((FALLBACK_FUNCTION.into(), "ANY".into(), "$default".into()));
    t
}

/// (binary, METHOD, path) for every HttpApi event of every function.
fn template_routes() -> BTreeSet<(String, String, String)> {
    let text = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("template.yaml parses");
    let resources = docs[0]["Resources"].as_hash().expect("Resources");
    let mut found = BTreeSet::new();
    for (name, res) in resources {
        if res["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let name = name.as_str().unwrap();
        let binary = res["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap_or_else(|| {
                panic!("{name} names its binary in Metadata.BuildProperties.Binary")
            });
        let events = res["Properties"]["Events"]
            .as_hash()
            .cloned()
            .unwrap_or_default();
        for (_, ev) in events {
            if ev["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            let p = &ev["Properties"];
            let method = p["Method"].as_str().unwrap().to_ascii_uppercase();
            let path = p["Path"].as_str().unwrap().to_string();
            assert!(
                !matches!(p["ApiId"], Yaml::BadValue),
                "{name} is attached to the HttpApi"
            );
            found.insert((binary.to_string(), method, path));
        }
    }
    found
}

#[test]
fn template_declares_exactly_the_route_table() {
    assert_eq!(template_routes(), table());
}

#[test]
fn every_function_has_a_binary_and_a_sample_event() {
    for (function, _, _) in table() {
        let bin = repo()
            .join("functions/src/bin")
            .join(format!("{function}.rs"));
        let src =
            std::fs::read_to_string(&bin).unwrap_or_else(|_| panic!("{} exists", bin.display()));
        assert!(
            src.contains(&format!("\"{function}\"")),
            "{function} binary serves its own route"
        );
        let event = repo().join("events").join(format!("{function}.json"));
        let ev: Value = serde_json::from_str(&std::fs::read_to_string(&event).unwrap()).unwrap();
        assert_eq!(ev["version"], "2.0", "{function}");
    }
    let bins: BTreeSet<String> = std::fs::read_dir(repo().join("functions/src/bin"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    let functions: BTreeSet<String> = table().into_iter().map(|(f, _, _)| f).collect();
    assert_eq!(bins, functions, "no binary without a route");
}

#[tokio::test]
async fn served_openapi_document_matches_the_route_table() {
    let s = TestServer::start().await;
    let doc: Value = s
        .get("/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (verb, op) in ops.as_object().unwrap() {
            documented.insert((
                op["operationId"].as_str().unwrap().to_string(),
                verb.to_ascii_uppercase(),
                path.clone(),
            ));
        }
    }
    let mut expected = table();
    expected.retain(|(f, _, _)| f != FALLBACK_FUNCTION);
    assert_eq!(documented, expected);
}
