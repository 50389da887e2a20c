//! The request fingerprint: SHA-256 over a versioned encoding of method, path, query and
//! body.
//!
//! A JSON body is hashed in canonical form (object members sorted by key, no insignificant
//! whitespace, strings re-escaped one way), so a client that re-serializes the same JSON on
//! retry still matches. Numbers keep their literal text: `1` and `1.0` differ, and two large
//! integers never collapse into one float. Any other body, and a JSON body that does not
//! parse, is hashed as raw bytes.

use std::fmt;

use http::HeaderMap;
use http::header::CONTENT_TYPE;
use serde_json::Value;
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

/// Whether the request declares a JSON body (`application/json` or any `+json` type).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().as_bytes();
    let suffix_at = essence.len().saturating_sub(5);
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence
            .get(..12)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"application/"))
            && essence[suffix_at..].eq_ignore_ascii_case(b"+json"))
}

/// The canonical form of a JSON document, or `None` when `body` is not JSON.
///
/// `serde_json` (with `arbitrary_precision`, so numbers keep their text) parses the body;
/// the value is written back with every object's members sorted by key.
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    write_canonical(&value, &mut out);
    Some(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
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
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Null => out.extend_from_slice(b"null"),
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
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/json"));
        assert!(!is_json(&h));
    }
}
