//! Lambda entry point for the `api_admin_create_project` function (see `shared/src/routes.rs`).

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::lambda::run_http("api_admin_create_project").await
}
