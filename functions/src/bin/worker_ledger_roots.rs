//! Lambda entry point for `worker_ledger_roots`: seals organisations as the
//! roots queue asks, reporting failed messages individually (see
//! `shared/src/jobs.rs`).

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::jobs::run_worker_ledger_roots().await
}
