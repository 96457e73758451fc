//! Message delivery: the webhook signature scheme and the retry policy.

pub mod retry;
pub mod webhook;
