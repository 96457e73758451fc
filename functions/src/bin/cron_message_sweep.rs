//! Lambda entry point for `cron_message_sweep`: every 5 minutes, queues
//! again the messages a lost queue message or a crashed worker left behind
//! (see `shared/src/messages/delivery.rs`).

#[tokio::main]
async fn main() -> Result<(), ledgerline::lambda::Error> {
    ledgerline::messages::worker::run_cron_message_sweep().await
}
