//! Fuzz target: X-C360-Signature parsing and verification. Never a panic; a verdict only for a
//! header that decodes to the body's HMAC under the key it names.
#![no_main]

use c360_bridge::webhook::signature::{TEST_KEY, Verdict, Verifier, sign};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const KEYS: [&str; 2] = ["current-key", "previous-key"];

fuzz_target!(|data: &[u8]| {
    // First byte: how many of the next bytes are the header; the rest is the body.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize).min(rest.len());
    let (header, body) = rest.split_at(n);
    let verifier = Verifier::new(
        KEYS.iter().map(|k| SecretString::from(k.to_string())).collect(),
        true,
    );
    let expected = |key: &str| sign(key.as_bytes(), body);
    let trimmed = std::str::from_utf8(header.trim_ascii()).ok();
    match verifier.verify(Some(header), body) {
        Ok(Verdict::Key(i)) => assert_eq!(trimmed, Some(expected(KEYS[i]).as_str())),
        Ok(Verdict::TestKey) => assert_eq!(trimmed, Some(expected(TEST_KEY).as_str())),
        Err(_) => {}
    }
    // A correct signature of the same body always verifies, whatever came before.
    let good = expected(KEYS[0]);
    assert_eq!(verifier.verify(Some(good.as_bytes()), body), Ok(Verdict::Key(0)));
});
