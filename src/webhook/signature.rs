//! `X-C360-Signature`: Base64 of HMAC-SHA256 over the raw body, checked against several keys.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub use crate::config::key_list::TEST_KEY;

/// The header carrying the signature.
pub const HEADER: &str = "x-c360-signature";

/// Which key verified a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// One of the webhook's own keys (index in its key list; 0 is the current key).
    Key(usize),
    /// The generic test key: the body may only be a test ping.
    TestKey,
}

/// Why a signature was refused; `code()` names it in answers, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-C360-Signature header is missing")]
    Missing,
    #[error("the X-C360-Signature header is not standard Base64 of a 32-byte HMAC-SHA256")]
    Malformed,
    #[error("the signature matches none of the webhook's keys")]
    NoMatch,
}

impl SignatureError {
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::NoMatch => "signature_mismatch",
        }
    }
}

/// Computes the `X-C360-Signature` value of `body` under `key`, as catalog360 does.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    STANDARD.encode(mac(key, body).finalize().into_bytes())
}

fn mac(key: &[u8], body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(body);
    m
}

/// Checks signatures for one webhook: any of its keys, and the test key if allowed.
pub struct Verifier {
    keys: Vec<SecretString>,
    accept_test_key: bool,
}

impl Verifier {
    pub fn new(keys: Vec<SecretString>, accept_test_key: bool) -> Self {
        Self {
            keys,
            accept_test_key,
        }
    }

    /// Verifies `header` (the raw header value) over `body`, comparing in constant time.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<Verdict, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let sig = STANDARD
            .decode(header.trim_ascii())
            .map_err(|_| SignatureError::Malformed)?;
        if sig.len() != 32 {
            return Err(SignatureError::Malformed);
        }
        for (i, key) in self.keys.iter().enumerate() {
            if mac(key.expose_secret().as_bytes(), body)
                .verify_slice(&sig)
                .is_ok()
            {
                return Ok(Verdict::Key(i));
            }
        }
        if self.accept_test_key && mac(TEST_KEY.as_bytes(), body).verify_slice(&sig).is_ok() {
            return Ok(Verdict::TestKey);
        }
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(keys: &[&str], test: bool) -> Verifier {
        Verifier::new(
            keys.iter()
                .map(|k| SecretString::from(k.to_string()))
                .collect(),
            test,
        )
    }

    #[test]
    fn rfc4231_case_2() {
        // RFC 4231 §4.3: HMAC-SHA256("Jefe", "what do ya want for nothing?") =
        // 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843
        let expected =
            hex::decode("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
                .unwrap();
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            STANDARD.encode(expected)
        );
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
        );
    }

    #[test]
    fn any_key_verifies_and_reports_which() {
        let v = verifier(&["new", "old"], true);
        let body = br#"{"events":[]}"#;
        assert_eq!(
            v.verify(Some(sign(b"new", body).as_bytes()), body),
            Ok(Verdict::Key(0))
        );
        assert_eq!(
            v.verify(Some(sign(b"old", body).as_bytes()), body),
            Ok(Verdict::Key(1))
        );
        assert_eq!(
            v.verify(Some(sign(b"test-webhook", body).as_bytes()), body),
            Ok(Verdict::TestKey)
        );
    }

    #[test]
    fn refusals_say_why() {
        let v = verifier(&["k"], false);
        let body = b"{}";
        assert_eq!(v.verify(None, body), Err(SignatureError::Missing));
        assert_eq!(
            v.verify(Some(b"not base64!"), body),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            v.verify(Some(b"c2hvcnQ="), body),
            Err(SignatureError::Malformed)
        );
        let hex_sig = hex::encode(mac(b"k", body).finalize().into_bytes());
        assert_eq!(
            v.verify(Some(hex_sig.as_bytes()), body),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            v.verify(Some(sign(b"other", body).as_bytes()), body),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            v.verify(Some(sign(b"test-webhook", body).as_bytes()), body),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn one_changed_byte_fails() {
        let v = verifier(&["k"], false);
        let sig = sign(b"k", b"{\"events\":[1]}");
        assert_eq!(
            v.verify(Some(sig.as_bytes()), b"{\"events\":[2]}"),
            Err(SignatureError::NoMatch)
        );
    }
}

/// The signature fuzz target's invariants (fuzz/fuzz_targets/signature.rs) as property tests.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const KEYS: [&str; 2] = ["current-key", "previous-key"];

    fn verifier() -> Verifier {
        Verifier::new(
            KEYS.iter()
                .map(|k| SecretString::from(k.to_string()))
                .collect(),
            true,
        )
    }

    /// A verdict only for a header that is the body's signature under the key it names.
    fn holds(header: &[u8], body: &[u8]) {
        let v = verifier();
        let trimmed = std::str::from_utf8(header.trim_ascii()).ok();
        match v.verify(Some(header), body) {
            Ok(Verdict::Key(i)) => {
                assert_eq!(trimmed, Some(sign(KEYS[i].as_bytes(), body).as_str()))
            }
            Ok(Verdict::TestKey) => {
                assert_eq!(trimmed, Some(sign(TEST_KEY.as_bytes(), body).as_str()))
            }
            Err(_) => {}
        }
        let good = sign(KEYS[1].as_bytes(), body);
        assert_eq!(v.verify(Some(good.as_bytes()), body), Ok(Verdict::Key(1)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn only_the_right_signature_verifies(header in prop::collection::vec(any::<u8>(), 0..64), body in prop::collection::vec(any::<u8>(), 0..128)) {
            holds(&header, &body);
        }

        #[test]
        fn a_signature_with_one_character_changed_is_refused(body in prop::collection::vec(any::<u8>(), 0..128), at in any::<prop::sample::Index>(), c in "[A-Za-z0-9+/]") {
            let mut sig = sign(KEYS[0].as_bytes(), &body).into_bytes();
            let i = at.index(43);
            prop_assume!(sig[i] != c.as_bytes()[0]);
            sig[i] = c.as_bytes()[0];
            prop_assert!(verifier().verify(Some(&sig), &body).is_err());
            holds(&sig, &body);
        }
    }
}
