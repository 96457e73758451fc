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

/// Who made `call`, and when (the service's clock): the actor its ledger
/// events and audit rows name.
pub(crate) fn actor(
    ctx: &crate::context::AppContext,
    call: &crate::http::Call,
) -> crate::accounts::Actor {
    crate::accounts::Actor {
        key_id: call.principal.as_ref().map(|p| p.key_id),
        request_id: call.request_id.clone(),
        at: ctx.clock.now(),
    }
}
