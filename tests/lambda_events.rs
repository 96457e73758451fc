//! Every sample event in `events/` fed in-process to the handler, the way
//! the Lambda runtime would (lambda_http's own event parsing).

use ledgerline::http::pipeline::{Pipeline, Serve};
use ledgerline_tests::{sample_event, TestServer, EVENT_EXPECTATIONS};
use serde_json::Value;

#[tokio::test]
async fn every_sample_event_gets_its_expected_response() {
    let s = TestServer::start().await;
    for (function, status) in EVENT_EXPECTATIONS {
        let event = sample_event(function, &s.seed);
        let req = lambda_http::request::from_str(&event)
            .unwrap_or_else(|e| panic!("events/{function}.json is a valid API Gateway event: {e}"));
        let pipeline = Pipeline::new(s.ctx.clone(), Serve::Function(function));
        let resp = ledgerline::lambda::handle_event(&pipeline, req).await;
        assert_eq!(
            resp.status().as_u16(),
            *status,
            "{function}: {:?}",
            resp.body()
        );
        // The API Gateway request id is used when the client sent none.
        let rid = resp.headers()["x-request-id"].to_str().unwrap();
        let ev: Value = serde_json::from_str(&event).unwrap();
        assert_eq!(
            rid,
            ev["requestContext"]["requestId"].as_str().unwrap(),
            "{function}"
        );
        let body: Value = match resp.body() {
            lambda_http::Body::Text(t) => serde_json::from_str(t).unwrap(),
            other => panic!("{function}: JSON is sent as text, got {other:?}"),
        };
        if *status >= 400 {
            ledgerline_tests::assert_contract(&body, "route_not_found");
        }
    }
}

#[tokio::test]
async fn a_function_only_serves_its_own_route() {
    let s = TestServer::start().await;
    let event = sample_event("api_me", &s.seed);
    // The api_health function handed api_me's event (a wiring mistake) must
    // not serve it.
    let pipeline = Pipeline::new(s.ctx.clone(), Serve::Function("api_health"));
    let resp = ledgerline::lambda::handle_event(
        &pipeline,
        lambda_http::request::from_str(&event).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 404);
    // The fallback answers a wrong method on a known path with 405.
    let wrong = event.replace("\"method\": \"GET\"", "\"method\": \"DELETE\"");
    assert_ne!(wrong, event);
    let fallback = Pipeline::new(s.ctx.clone(), Serve::Function("api_fallback"));
    let resp = ledgerline::lambda::handle_event(
        &fallback,
        lambda_http::request::from_str(&wrong).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 405);
}
