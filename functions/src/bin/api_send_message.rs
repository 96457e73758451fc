//! Lambda entry point for the `api_send_message` function (see `shared/src/routes.rs`).

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::lambda::run_http("api_send_message").await
}
