//! HTTP handlers, one module per API resource. Each parses its input, calls
//! a use case and shapes the response; no business rules live here.

pub mod admin;
pub mod audit;
pub mod evidence;
pub mod ledger;
pub mod me;
pub mod messages;
pub mod meta;
pub mod projects;
pub mod seals;
