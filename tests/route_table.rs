//! There is one list of routes. `template.yaml`, the OpenAPI document served
//! at /openapi.json, the function binaries and `events/` must all agree with
//! it; this test fails the moment one of them drifts.

use ledgerline::jobs::{Trigger, JOB_FUNCTIONS};
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
    let mut functions: BTreeSet<String> = table().into_iter().map(|(f, _, _)| f).collect();
    functions.extend(JOB_FUNCTIONS.iter().map(|j| j.function.to_string()));
    assert_eq!(
        bins, functions,
        "no binary without a route or an entry in ledgerline::jobs::JOB_FUNCTIONS"
    );
}

fn template() -> Yaml {
    let text = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    YamlLoader::load_from_str(&text)
        .expect("template.yaml parses")
        .remove(0)
}

/// The template resource (name, body) of the function built from `binary`.
fn function_resource<'a>(t: &'a Yaml, binary: &str) -> (&'a str, &'a Yaml) {
    let found: Vec<_> = t["Resources"]
        .as_hash()
        .unwrap()
        .iter()
        .filter(|(_, r)| {
            r["Type"].as_str() == Some("AWS::Serverless::Function")
                && r["Metadata"]["BuildProperties"]["Binary"].as_str() == Some(binary)
        })
        .map(|(n, r)| (n.as_str().unwrap(), r))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one template function builds {binary}"
    );
    found[0]
}

/// `!GetAtt X.Arn` and `!Ref X` both load as the plain string; this is X.
fn referenced(v: &Yaml) -> &str {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("a reference, not {v:?}"));
    s.strip_suffix(".Arn").unwrap_or(s)
}

/// Every statement of every inline policy of a role: (actions, resources).
fn role_statements(t: &Yaml, role: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let r = &t["Resources"][role];
    assert_eq!(r["Type"].as_str(), Some("AWS::IAM::Role"), "{role}");
    let list = |v: &Yaml| -> Vec<String> {
        match v {
            Yaml::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
            other => vec![other.as_str().unwrap().to_string()],
        }
    };
    let mut out = Vec::new();
    for policy in r["Properties"]["Policies"].as_vec().unwrap() {
        for st in policy["PolicyDocument"]["Statement"].as_vec().unwrap() {
            assert_eq!(st["Effect"].as_str(), Some("Allow"), "{role}");
            out.push((list(&st["Action"]), list(&st["Resource"])));
        }
    }
    out
}

/// Non-HTTP functions: each is in the template with exactly its trigger (a
/// scheduler schedule or an SQS queue with a dead-letter queue), never on
/// the HTTP API, and its event sample has the trigger's shape.
#[test]
fn job_functions_have_their_triggers_in_the_template() {
    let t = template();
    let resources = t["Resources"].as_hash().unwrap();
    for job in JOB_FUNCTIONS {
        let (name, res) = function_resource(&t, job.function);
        let events = res["Properties"]["Events"]
            .as_hash()
            .cloned()
            .unwrap_or_default();
        assert!(
            events
                .values()
                .all(|e| e["Type"].as_str() != Some("HttpApi")),
            "{name} is not an HTTP route"
        );
        let sample: Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("events").join(format!("{}.json", job.function)))
                .unwrap(),
        )
        .unwrap_or_else(|e| panic!("events/{}.json: {e}", job.function));
        match job.trigger {
            Trigger::Schedule { expression } => {
                assert!(events.is_empty(), "{name}: triggered only by its schedule");
                let schedules: Vec<_> = resources
                    .values()
                    .filter(|r| {
                        r["Type"].as_str() == Some("AWS::Scheduler::Schedule")
                            && referenced(&r["Properties"]["Target"]["Arn"]) == name
                    })
                    .collect();
                assert_eq!(schedules.len(), 1, "{name} has one schedule");
                let p = &schedules[0]["Properties"];
                assert_eq!(p["ScheduleExpression"].as_str(), Some(expression), "{name}");
                assert_eq!(
                    p["ScheduleExpressionTimezone"].as_str(),
                    Some("UTC"),
                    "{name}"
                );
                // The scheduler's role may invoke this function and nothing else.
                let role = referenced(&p["Target"]["RoleArn"]);
                assert_eq!(
                    t["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
                        ["Principal"]["Service"]
                        .as_str(),
                    Some("scheduler.amazonaws.com")
                );
                for (actions, targets) in role_statements(&t, role) {
                    assert_eq!(actions, ["lambda:InvokeFunction"], "{role}");
                    assert!(targets
                        .iter()
                        .all(|r| referenced(&Yaml::String(r.clone())) == name));
                }
                assert!(sample.is_object(), "events/{}.json", job.function);
            }
            Trigger::Sqs => {
                assert_eq!(events.len(), 1, "{name}: one event source");
                let ev = events.values().next().unwrap();
                assert_eq!(ev["Type"].as_str(), Some("SQS"), "{name}");
                let types = ev["Properties"]["FunctionResponseTypes"].as_vec().unwrap();
                assert!(
                    types
                        .iter()
                        .any(|v| v.as_str() == Some("ReportBatchItemFailures")),
                    "{name} reports failed messages one by one"
                );
                let queue = &t["Resources"][referenced(&ev["Properties"]["Queue"])];
                assert_eq!(queue["Type"].as_str(), Some("AWS::SQS::Queue"), "{name}");
                let qp = &queue["Properties"];
                assert_eq!(
                    qp["RedrivePolicy"]["maxReceiveCount"].as_i64(),
                    Some(5),
                    "{name}"
                );
                let dlq = &t["Resources"][referenced(&qp["RedrivePolicy"]["deadLetterTargetArn"])];
                assert_eq!(dlq["Type"].as_str(), Some("AWS::SQS::Queue"), "{name}");
                for q in [qp, &dlq["Properties"]] {
                    assert!(
                        q["SqsManagedSseEnabled"].as_bool() == Some(true)
                            || q["KmsMasterKeyId"].as_str().is_some(),
                        "{name}: queues are encrypted"
                    );
                }
                let records = sample["Records"].as_array().expect("an SQS event");
                assert!(records.iter().all(|r| r["eventSource"] == "aws:sqs"));
            }
        }
    }
    // Every function in the template is a route or a job.
    let known: BTreeSet<String> = table()
        .into_iter()
        .map(|(f, _, _)| f)
        .chain(JOB_FUNCTIONS.iter().map(|j| j.function.to_string()))
        .collect();
    for r in resources.values() {
        if r["Type"].as_str() == Some("AWS::Serverless::Function") {
            let bin = r["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap();
            assert!(known.contains(bin), "{bin} is neither a route nor a job");
        }
    }
}

/// The seal jobs' roles: the cron may only send to the roots queue, the
/// worker only consume it (besides writing their own log groups).
#[test]
fn job_roles_are_least_privilege() {
    let t = template();
    let (_, cron) = function_resource(&t, "cron_ledger_roots");
    let (_, worker) = function_resource(&t, "worker_ledger_roots");
    let queue_of_worker = referenced(
        &worker["Properties"]["Events"]
            .as_hash()
            .unwrap()
            .values()
            .next()
            .unwrap()["Properties"]["Queue"],
    )
    .to_string();
    let check = |res: &Yaml, allowed: &[&str]| {
        let role = referenced(&res["Properties"]["Role"]);
        let log_group = referenced(&res["Properties"]["LoggingConfig"]["LogGroup"]);
        for (actions, targets) in role_statements(&t, role) {
            let on_queue = targets
                .iter()
                .all(|r| r.trim_end_matches(".Arn") == queue_of_worker);
            let on_logs = targets
                .iter()
                .all(|r| r.trim_end_matches(".Arn") == log_group);
            for a in &actions {
                if a.starts_with("logs:") {
                    assert!(on_logs, "{role}: {a} only on its own log group");
                } else {
                    assert!(allowed.contains(&a.as_str()), "{role}: {a} is not needed");
                    assert!(on_queue, "{role}: {a} only on the roots queue");
                }
            }
        }
    };
    check(cron, &["sqs:SendMessage"]);
    check(
        worker,
        &[
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:ChangeMessageVisibility",
            // Required by Lambda's SQS event source mapping.
            "sqs:GetQueueAttributes",
        ],
    );
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
