//! Ledgerline's library: domain, use cases, ports and adapters. The Lambda
//! binaries in `functions/` and the `ledgerline` CLI are thin shells over it.

pub mod accounts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod blob;
pub mod clock;
pub mod config;
pub mod context;
pub mod db;
pub mod error;
pub mod evidence;
pub mod http;
pub mod idempotency;
pub mod jobs;
pub mod lambda;
pub mod ledger;
pub mod logging;
pub mod messages;
pub mod openapi;
pub mod queue;
pub mod ratelimit;
pub mod routes;
pub mod server;
