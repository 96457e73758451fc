//! Lambda entry point for the `api_ledger_inclusion_proof` function (see `shared/src/routes.rs`).

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::lambda::run_http("api_ledger_inclusion_proof").await
}
