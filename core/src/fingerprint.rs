//! The request fingerprint: SHA-256 over a versioned encoding of method, path, query and
//! body.
//!
//! A JSON body is hashed in canonical form (object members sorted by key, no insignificant
//! whitespace, strings re-escaped one way), so a client that re-serializes the same JSON on
//! retry still matches. Numbers keep their literal text: `1` and `1.0` differ, and two large
//! integers never collapse into one float. Any other body, and a JSON body that does not
//! parse, is hashed as raw bytes.

use std::fmt;

use std::borrow::Cow;

use http::HeaderMap;
use http::header::CONTENT_TYPE;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

/// The encoding version new fingerprints use.
pub const FINGERPRINT_VERSION: u8 = 1;

/// Domain separation prefix of version 1.
const V1_DOMAIN: &[u8] = b"cnerium.fingerprint.v1";

/// A versioned SHA-256 digest identifying what a request asked for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    version: u8,
    digest: [u8; 32],
}

impl Fingerprint {
    /// Rebuilds a fingerprint a store kept.
    pub const fn from_parts(version: u8, digest: [u8; 32]) -> Self {
        Self { version, digest }
    }

    /// Computes the fingerprint of a request with the current version.
    pub fn compute(
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(V1_DOMAIN);
        field(&mut hasher, method.as_str().as_bytes());
        field(&mut hasher, uri.path().as_bytes());
        field(&mut hasher, uri.query().unwrap_or("").as_bytes());

        let canonical = is_json(headers).then(|| canonical_json(body)).flatten();
        match canonical {
            Some(json) => {
                hasher.update(b"J");
                field(&mut hasher, &json);
            }
            None => {
                hasher.update(b"R");
                field(&mut hasher, body);
            }
        }

        Self {
            version: FINGERPRINT_VERSION,
            digest: hasher.finalize().into(),
        }
    }

    /// The encoding version this fingerprint was computed with.
    pub const fn version(&self) -> u8 {
        self.version
    }

    /// The raw SHA-256 digest.
    pub const fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The digest in lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}:{}", self.version, &self.to_hex()[..16])
    }
}

fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// Whether the request declares a JSON body: `application/json`, or any type with the
/// `+json` structured syntax suffix (`application/merge-patch+json`, `model/gltf+json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    if kind.is_empty() || subtype.is_empty() {
        return false;
    }
    let suffix_at = subtype.len().saturating_sub(5);
    essence.eq_ignore_ascii_case("application/json")
        || (subtype.len() > 5
            && subtype
                .get(suffix_at..)
                .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json")))
}

/// The canonical form of a JSON document, or `None` when `body` is not JSON or repeats a
/// key within one object.
///
/// `serde_json` parses the body (with `arbitrary_precision`, so numbers keep their text)
/// and the canonical form is written while it parses, with every object's members sorted
/// by key; no tree of values is built. An object that names a key twice has no single
/// meaning (parsers disagree on which member wins), so such a body is left to be hashed as
/// raw bytes: only a byte-identical retry matches it.
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    Canonical(&mut out).deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(out)
}

/// The key `serde_json` uses to hand a number's literal text to a visitor when its
/// `arbitrary_precision` feature is on: the number arrives as a one-member map.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Writes the canonical form of the next JSON value into its buffer.
struct Canonical<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for Canonical<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Canonical<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.extend_from_slice(v.to_string().as_bytes());
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.extend_from_slice(v.to_string().as_bytes());
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        serde_json::to_writer(&mut *self.0, &v).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        write_string(v, self.0);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push(b'[');
        let mut first = true;
        loop {
            let mark = out.len();
            if !first {
                out.push(b',');
            }
            if seq.next_element_seed(Canonical(&mut *out))?.is_none() {
                out.truncate(mark);
                break;
            }
            first = false;
        }
        out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.0;
        let Some(first) = map.next_key::<Cow<'de, str>>()? else {
            out.extend_from_slice(b"{}");
            return Ok(());
        };
        if first == NUMBER_TOKEN {
            // A document can spell the token as a key of its own; only a number's literal
            // text is written as one.
            let literal: Cow<'de, str> = map.next_value()?;
            if map.next_key::<de::IgnoredAny>()?.is_some()
                || literal.parse::<serde_json::Number>().is_err()
            {
                return Err(de::Error::custom("an object names the number token"));
            }
            out.extend_from_slice(literal.as_bytes());
            return Ok(());
        }

        let mut members = Vec::new();
        let mut key = Some(first);
        while let Some(name) = key {
            let mut value = Vec::new();
            map.next_value_seed(Canonical(&mut value))?;
            members.push((name, value));
            key = map.next_key::<Cow<'de, str>>()?;
        }
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return Err(de::Error::custom("an object repeats a key"));
        }
        out.push(b'{');
        for (i, (name, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(name, out);
            out.push(b':');
            out.extend_from_slice(value);
        }
        out.push(b'}');
        Ok(())
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Writing a string into a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("serializing a str into memory");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method, Uri};
    use serde_json::Value;

    /// The canonical form written from a parsed `serde_json::Value`, the plain reading of
    /// the rule the streaming writer must match byte for byte.
    fn reference(body: &[u8]) -> Option<Vec<u8>> {
        fn write(value: &Value, out: &mut Vec<u8>) {
            match value {
                Value::Object(map) => {
                    let mut members: Vec<_> = map.iter().collect();
                    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    out.push(b'{');
                    for (i, (key, value)) in members.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write_string(key, out);
                        out.push(b':');
                        write(value, out);
                    }
                    out.push(b'}');
                }
                Value::Array(items) => {
                    out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write(item, out);
                    }
                    out.push(b']');
                }
                Value::String(s) => write_string(s, out),
                Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
                Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                Value::Null => out.extend_from_slice(b"null"),
            }
        }
        let value: Value = serde_json::from_slice(body).ok()?;
        let mut out = Vec::new();
        write(&value, &mut out);
        Some(out)
    }

    #[test]
    fn the_streaming_writer_matches_the_tree_writer() {
        let documents: &[&str] = &[
            r#"{"product_id":"p1","quantity":2}"#,
            "{ \"quantity\" : 2,\n \"product_id\": \"p\\u0031\" }",
            r#"{"b":{"y":1,"x":[{"d":1,"c":2}]},"a":null,"c":[],"d":{},"e":[[],[{}]]}"#,
            r#"[1, 1.0, -0, 1e5, 1E+5, 12345678901234567890123, -1.5e-300, 0.1]"#,
            r#""a string with \"quotes\", \\ and \u00e9 and \ud83d\ude00""#,
            "true",
            " false ",
            "null",
            "-12",
            r#"{"\u0061":1,"b\n":[true,false,null],"":"empty key"}"#,
            r#"{"z":{"z":{"z":{"a":[1,{"k":"v","a":"w"}]}}}}"#,
        ];
        for doc in documents {
            let streamed = canonical_json(doc.as_bytes());
            assert_eq!(streamed, reference(doc.as_bytes()), "{doc}");
            assert!(streamed.is_some(), "{doc}");
        }
    }

    #[test]
    fn bodies_that_are_not_one_json_document_have_no_canonical_form() {
        for doc in [
            "",
            "{",
            "[1,]",
            "{\"a\":1}{}",
            "{\"a\":1} x",
            "nul",
            "\"\\x\"",
            "01",
        ] {
            assert_eq!(canonical_json(doc.as_bytes()), None, "{doc:?}");
        }
    }

    #[test]
    fn an_object_with_a_repeated_key_is_hashed_as_raw_bytes() {
        assert_eq!(canonical_json(br#"{"amount":100,"amount":1}"#), None);
        assert_eq!(canonical_json(br#"[{"a":{"x":1,"x":1}}]"#), None);
        let h = json_headers();
        let repeated = fp(&h, "/pay", r#"{"amount":100,"amount":1}"#);
        assert_ne!(repeated, fp(&h, "/pay", r#"{"amount":1}"#));
        assert_ne!(repeated, fp(&h, "/pay", r#"{"amount":100}"#));
        assert_eq!(repeated, fp(&h, "/pay", r#"{"amount":100,"amount":1}"#));
    }

    #[test]
    fn an_object_spelling_the_number_token_is_not_taken_for_a_number() {
        let spelled = br#"{"$serde_json::private::Number":"x"}"#;
        assert_eq!(canonical_json(spelled), None);
        let extra = br#"{"$serde_json::private::Number":"1","b":2}"#;
        assert_eq!(canonical_json(extra), None);
    }

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h
    }

    fn fp(headers: &HeaderMap, uri: &str, body: &str) -> Fingerprint {
        Fingerprint::compute(
            &Method::POST,
            &uri.parse::<Uri>().unwrap(),
            headers,
            body.as_bytes(),
        )
    }

    #[test]
    fn reserialized_json_has_the_same_fingerprint() {
        let h = json_headers();
        let a = fp(&h, "/orders", r#"{"product_id":"p1","quantity":2}"#);
        let b = fp(
            &h,
            "/orders",
            "{ \"quantity\" : 2,\n \"product_id\": \"p\\u0031\" }",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn different_json_differs() {
        let h = json_headers();
        let a = fp(&h, "/orders", r#"{"product_id":"p1","quantity":2}"#);
        let b = fp(&h, "/orders", r#"{"product_id":"p2","quantity":1}"#);
        assert_ne!(a, b);
    }

    #[test]
    fn large_integers_do_not_collapse() {
        let h = json_headers();
        let a = fp(&h, "/pay", r#"{"amount":12345678901234567890123}"#);
        let b = fp(&h, "/pay", r#"{"amount":12345678901234567890124}"#);
        assert_ne!(a, b);
    }

    #[test]
    fn nested_objects_are_sorted_too() {
        assert_eq!(
            canonical_json(br#"{"b":{"y":1,"x":[{"d":1,"c":2}]},"a":null}"#).unwrap(),
            br#"{"a":null,"b":{"x":[{"c":2,"d":1}],"y":1}}"#.to_vec()
        );
    }

    #[test]
    fn non_json_bodies_are_raw_bytes() {
        let h = HeaderMap::new();
        let a = fp(&h, "/upload", r#"{"a":1}"#);
        let b = fp(&h, "/upload", r#"{ "a":1}"#);
        assert_ne!(a, b);
    }

    #[test]
    fn path_query_and_method_are_covered() {
        let h = json_headers();
        let base = fp(&h, "/orders?x=1", "{}");
        assert_ne!(base, fp(&h, "/orders?x=2", "{}"));
        assert_ne!(base, fp(&h, "/orders2?x=1", "{}"));
        let put = Fingerprint::compute(&Method::PUT, &"/orders?x=1".parse().unwrap(), &h, b"{}");
        assert_ne!(base, put);
    }

    #[test]
    fn plus_json_types_count_as_json() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/merge-patch+json"),
        );
        assert!(is_json(&h));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("model/gltf+JSON; x=1"),
        );
        assert!(is_json(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("APPLICATION/JSON"));
        assert!(is_json(&h));
        for not_json in [
            "text/json",
            "application/+json",
            "+json",
            "application/jsonx",
            "json",
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(not_json));
            assert!(!is_json(&h), "{not_json}");
        }
    }
}
