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

/// After the commit that appended `pending`: settles it on the same
/// connection and returns its seq (None: nothing was appended, or settling
/// failed and was logged; the change stands either way).
pub(crate) async fn sequenced(
    db: &deadpool_postgres::Client,
    org: uuid::Uuid,
    pending: Option<crate::ledger::events::Pending>,
) -> Option<u64> {
    crate::ledger::events::settle_committed(db, org, pending?).await
}

/// Adds `ledger_seq` (the seq of the event recording the change) to a body.
pub(crate) fn with_seq(value: &impl serde::Serialize, seq: Option<u64>) -> serde_json::Value {
    let mut v = serde_json::to_value(value).unwrap_or_default();
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("ledger_seq".into(), serde_json::json!(seq));
    }
    v
}
