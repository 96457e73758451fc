//! Lambda entry point for the `api_complete_evidence_upload` function (see `shared/src/routes.rs`).

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::lambda::run_http("api_complete_evidence_upload").await
}
