//! The fingerprint's JSON canonicalization on any body: never panics, its output is JSON
//! that means the same document, and canonicalizing twice changes nothing.

#![no_main]

use cnerium_core::fingerprint::canonical_json;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let parsed = serde_json::from_slice::<Value>(body);
    let Some(once) = canonical_json(body) else {
        assert!(parsed.is_err(), "JSON that parses has a canonical form");
        return;
    };

    let twice = canonical_json(&once).expect("the canonical form is JSON");
    assert_eq!(once, twice, "canonicalization is idempotent");

    let original = parsed.expect("a body with a canonical form parses");
    let canonical: Value = serde_json::from_slice(&once).expect("the canonical form parses");
    assert_eq!(
        canonical, original,
        "the canonical form is the same document"
    );
    assert!(
        !once.iter().any(|b| matches!(b, b'\n' | b'\r' | b'\t')),
        "no insignificant whitespace: {}",
        String::from_utf8_lossy(&once)
    );
});
