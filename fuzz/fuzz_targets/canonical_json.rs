//! The fingerprint's JSON canonicalization on any body: never panics, its output is JSON
//! that means the same document, and canonicalizing twice changes nothing. A body has no
//! canonical form exactly when it is not JSON or an object in it names a key twice.

#![no_main]

use std::collections::HashSet;
use std::fmt;

use cnerium_core::fingerprint::canonical_json;
use libfuzzer_sys::fuzz_target;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let parsed = serde_json::from_slice::<Value>(body);
    let Some(once) = canonical_json(body) else {
        assert!(
            parsed.is_err() || repeats_a_key(body),
            "JSON that parses and names each key once has a canonical form"
        );
        return;
    };
    assert!(!repeats_a_key(body), "a repeated key has no canonical form");

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

/// Whether `body` parses as JSON in which some object names a key twice.
fn repeats_a_key(body: &[u8]) -> bool {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    matches!(
        KeysOnce.deserialize(&mut deserializer),
        Err(e) if e.to_string().starts_with(REPEATED)
    )
}

const REPEATED: &str = "repeated key";

/// Walks a document and fails on the first object that names a key twice.
struct KeysOnce;

impl<'de> DeserializeSeed<'de> for KeysOnce {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeysOnce {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(KeysOnce)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(de::Error::custom(REPEATED));
            }
            map.next_value_seed(KeysOnce)?;
        }
        Ok(())
    }
}
