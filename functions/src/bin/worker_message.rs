//! Lambda entry point for `worker_message`: delivers messages from the SQS
//! message queue, reporting the ones to look at again individually (see
//! `shared/src/messages/worker.rs`).

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::messages::worker::run_worker_message().await
}
