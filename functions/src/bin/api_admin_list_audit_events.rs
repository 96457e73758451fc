//! Lambda entry point for the `api_admin_list_audit_events` function (see `shared/src/routes.rs`).

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::lambda::run_http("api_admin_list_audit_events").await
}
