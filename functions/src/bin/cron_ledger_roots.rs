//! Lambda entry point for `cron_ledger_roots`: EventBridge Scheduler at
//! 02:00 UTC; queues one seal job per organisation (see `shared/src/jobs.rs`).

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::jobs::run_cron_ledger_roots().await
}
