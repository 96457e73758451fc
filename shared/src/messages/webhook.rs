//! Standard Webhooks signatures (https://www.standardwebhooks.com/):
//! `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC>`,
//! where the HMAC-SHA256 is over `"{id}.{timestamp}.{body}"` keyed with the
//! bytes of a `whsec_<base64>` secret.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const SECRET_PREFIX: &str = "whsec_";

/// How far a receiver lets a timestamp drift (the spec's recommendation).
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// A signing secret: random key bytes, shown to the user once as `whsec_…`.
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum WebhookError {
    MalformedSecret,
    MissingHeader(&'static str),
    TimestampOutOfTolerance,
    NoMatchingSignature,
}

impl std::fmt::Display for WebhookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebhookError::MalformedSecret => f.write_str("signing secret must be whsec_<base64>"),
            WebhookError::MissingHeader(h) => write!(f, "missing or malformed header {h}"),
            WebhookError::TimestampOutOfTolerance => f.write_str("timestamp outside the tolerance"),
            WebhookError::NoMatchingSignature => f.write_str("no matching signature"),
        }
    }
}

impl std::error::Error for WebhookError {}

impl SigningSecret {
    /// 24 random bytes, as the spec's reference libraries generate.
    pub fn generate() -> anyhow::Result<SigningSecret> {
        let mut key = vec![0u8; 24];
        getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
        Ok(SigningSecret(key))
    }

    pub fn parse(s: &str) -> Result<SigningSecret, WebhookError> {
        let b64 = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookError::MalformedSecret)?;
        let key = B64.decode(b64).map_err(|_| WebhookError::MalformedSecret)?;
        if key.len() < 24 || key.len() > 64 {
            return Err(WebhookError::MalformedSecret);
        }
        Ok(SigningSecret(key))
    }

    /// The `whsec_…` form; shown once, then only stored (encrypted at rest
    /// by the database's storage encryption, never logged).
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(&self.0))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The `webhook-signature` header value.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", B64.encode(self.mac(msg_id, timestamp, body)))
    }

    /// Verifies as a receiver does: timestamp within tolerance of `now`, and
    /// any one of the space-separated `v1,` signatures matching (constant time).
    pub fn verify(
        &self,
        msg_id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), WebhookError> {
        let ts: i64 = timestamp
            .parse()
            .map_err(|_| WebhookError::MissingHeader("webhook-timestamp"))?;
        if (now - ts).abs() > TIMESTAMP_TOLERANCE_SECS {
            return Err(WebhookError::TimestampOutOfTolerance);
        }
        let expected = self.mac(msg_id, ts, body);
        let matched = signatures.split(' ').any(|sig| {
            sig.strip_prefix("v1,")
                .and_then(|b| B64.decode(b).ok())
                .is_some_and(|bytes| bool::from(bytes.as_slice().ct_eq(&expected)))
        });
        if matched {
            Ok(())
        } else {
            Err(WebhookError::NoMatchingSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector published with the Standard Webhooks reference
    // libraries (and Svix's documentation).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn published_vector() {
        let s = SigningSecret::parse(SECRET).unwrap();
        assert_eq!(s.sign(MSG_ID, TIMESTAMP, BODY.as_bytes()), SIGNATURE);
        assert_eq!(
            s.verify(MSG_ID, "1614265330", SIGNATURE, BODY.as_bytes(), TIMESTAMP),
            Ok(())
        );
        assert_eq!(s.expose(), SECRET);
    }

    #[test]
    fn verification_rejects_changes() {
        let s = SigningSecret::parse(SECRET).unwrap();
        let ok = |id: &str, ts: &str, sig: &str, body: &str, now: i64| {
            s.verify(id, ts, sig, body.as_bytes(), now)
        };
        assert!(ok("msg_other", "1614265330", SIGNATURE, BODY, TIMESTAMP).is_err());
        assert!(ok(MSG_ID, "1614265331", SIGNATURE, BODY, TIMESTAMP).is_err());
        assert!(ok(
            MSG_ID,
            "1614265330",
            SIGNATURE,
            r#"{"test": 2432232315}"#,
            TIMESTAMP
        )
        .is_err());
        assert!(ok(MSG_ID, "1614265330", "v1,AAAA", BODY, TIMESTAMP).is_err());
        assert_eq!(
            ok(MSG_ID, "1614265330", SIGNATURE, BODY, TIMESTAMP + 301),
            Err(WebhookError::TimestampOutOfTolerance)
        );
        // Several signatures (key rotation): any one may match.
        assert!(ok(
            MSG_ID,
            "1614265330",
            &format!("v1,bad {SIGNATURE}"),
            BODY,
            TIMESTAMP
        )
        .is_ok());
    }

    #[test]
    fn secrets_round_trip_and_hide() {
        let s = SigningSecret::generate().unwrap();
        let shown = s.expose();
        assert!(shown.starts_with("whsec_"));
        let back = SigningSecret::parse(&shown).unwrap();
        assert_eq!(back.sign("m", 1, b"x"), s.sign("m", 1, b"x"));
        assert!(!format!("{s:?}").contains(&shown[6..]));
        assert!(SigningSecret::parse("whsec_!!").is_err());
        assert!(SigningSecret::parse("nope").is_err());
    }
}
