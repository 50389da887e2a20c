//! `IdempotencyKey::parse` on any header value: never panics, and every key it accepts is
//! 1 to 255 printable ASCII characters that name the same key when sent quoted.

#![no_main]

use cnerium_core::key::MAX_KEY_LEN;
use cnerium_core::{IdempotencyKey, KeyError};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
    let parsed = IdempotencyKey::parse(value);

    if let Ok(key) = &parsed {
        let text = key.as_str();
        assert!(!text.is_empty() && text.len() <= MAX_KEY_LEN, "{key:?}");
        assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{key:?}");
        assert_eq!(IdempotencyKey::new(text).as_ref(), Ok(key));

        let quoted = format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
        assert_eq!(
            IdempotencyKey::parse(quoted.as_bytes()).as_ref(),
            Ok(key),
            "the quoted form of {key:?}"
        );
    }

    // Read from a header map, the same value gives the same answer; sent twice, a 400.
    if let Ok(header) = HeaderValue::from_bytes(value) {
        let mut headers = HeaderMap::new();
        headers.append("idempotency-key", header.clone());
        assert_eq!(IdempotencyKey::from_headers(&headers), parsed);
        headers.append("Idempotency-Key", header);
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Err(KeyError::Repeated)
        );
    }
});
