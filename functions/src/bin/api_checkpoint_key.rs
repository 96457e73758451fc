//! Lambda entry point for the `api_checkpoint_key` function (see
//! `shared/src/routes.rs`). It publishes the checkpoint verifier key, so a
//! deployment without one fails at start-up rather than on a request.

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::jobs::check_publishing_function("api_checkpoint_key")?;
    ledgerline::lambda::run_http("api_checkpoint_key").await
}
