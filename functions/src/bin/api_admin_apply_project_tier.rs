//! Lambda entry point for the `api_admin_apply_project_tier` function (see `shared/src/routes.rs`).

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::lambda::run_http("api_admin_apply_project_tier").await
}
