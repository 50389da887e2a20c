//! The `Idempotency-Key` request header.
//!
//! A key arrives either as a bare token (`order-123`) or as an RFC 9651 string
//! (`"order-123"`); both name the same key. The quoted form is parsed by the `sfv` crate.

use std::fmt;

use http::HeaderMap;

/// Name of the request header that carries the key, matched case-insensitively.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Longest key accepted, in characters (all of which are ASCII).
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key: 1 to 255 printable ASCII characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Reads the key from request headers.
    ///
    /// Fails when the header is absent, sent more than once, or its value is neither a valid
    /// bare token nor a valid RFC 9651 string of 1 to 255 characters.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, KeyError> {
        // A `HeaderName` constant spares parsing the name on every lookup.
        const NAME: http::HeaderName = http::HeaderName::from_static(IDEMPOTENCY_KEY);
        let mut values = headers.get_all(NAME).iter();
        let Some(value) = values.next() else {
            return Err(KeyError::Missing);
        };
        if values.next().is_some() {
            return Err(KeyError::Repeated);
        }
        Self::parse(value.as_bytes())
    }

    /// Parses one header value.
    pub fn parse(value: &[u8]) -> Result<Self, KeyError> {
        let value = trim_ows(value);
        if value.is_empty() {
            return Err(KeyError::Empty);
        }
        let key = if value[0] == b'"' {
            parse_quoted(value)?
        } else {
            parse_bare(value)?
        };
        if is_blank(&key) {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { len: key.len() });
        }
        Ok(Self(key))
    }

    /// Builds a key from its content, checking the same rules as the quoted header form.
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        if is_blank(&key) {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { len: key.len() });
        }
        if let Some(byte) = key.bytes().find(|b| !(0x20..=0x7e).contains(b)) {
            return Err(KeyError::InvalidCharacter { byte });
        }
        Ok(Self(key))
    }

    /// The key's content, without quotes or escapes.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Whether a key's content is empty or only spaces (`""`, `" "`): no client means such a
/// key, and accepting it would let unrelated requests share it.
fn is_blank(key: &str) -> bool {
    key.bytes().all(|b| b == b' ')
}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

fn parse_bare(value: &[u8]) -> Result<String, KeyError> {
    if let Some(&byte) = value
        .iter()
        .find(|&&b| !(0x21..=0x7e).contains(&b) || matches!(b, b'"' | b'\\' | b','))
    {
        return Err(KeyError::InvalidCharacter { byte });
    }
    // Every byte was checked to be visible ASCII, so this cannot fail.
    Ok(String::from_utf8(value.to_vec()).expect("visible ASCII is UTF-8"))
}

fn parse_quoted(value: &[u8]) -> Result<String, KeyError> {
    let item: sfv::Item = sfv::Parser::new(value)
        .parse_item()
        .map_err(|_| KeyError::BadQuoting)?;
    if !item.params.is_empty() {
        return Err(KeyError::BadQuoting);
    }
    match item.bare_item.as_string() {
        Some(s) => Ok(s.as_str().to_owned()),
        None => Err(KeyError::BadQuoting),
    }
}

/// Why an `Idempotency-Key` header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The request has no `Idempotency-Key` header.
    Missing,
    /// The header appears more than once.
    Repeated,
    /// The key is empty or only whitespace.
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] characters.
    TooLong {
        /// Length of the refused key in bytes.
        len: usize,
    },
    /// A bare key holds a byte outside visible ASCII, or one of `"`, `\` and `,`.
    InvalidCharacter {
        /// The first offending byte.
        byte: u8,
    },
    /// A value starting with `"` is not a well-formed RFC 9651 string.
    BadQuoting,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => write!(f, "the request has no Idempotency-Key header"),
            Self::Repeated => write!(f, "the Idempotency-Key header was sent more than once"),
            Self::Empty => write!(f, "the Idempotency-Key header is empty or only spaces"),
            Self::TooLong { len } => write!(
                f,
                "the idempotency key is {len} characters long; at most {MAX_KEY_LEN} are allowed"
            ),
            Self::InvalidCharacter { byte } => write!(
                f,
                "the idempotency key holds byte 0x{byte:02x}; a bare key is visible ASCII \
                 without '\"', '\\' or ',' (quote it as an RFC 9651 string to use spaces)"
            ),
            Self::BadQuoting => write!(
                f,
                "the quoted idempotency key is not a valid RFC 9651 string: printable ASCII in \
                 double quotes, with only \\\" and \\\\ as escapes"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(s: &str) -> Result<String, KeyError> {
        IdempotencyKey::parse(s.as_bytes()).map(|k| k.0)
    }

    #[test]
    fn bare_and_quoted_forms_name_the_same_key() {
        assert_eq!(parse("order-123").unwrap(), "order-123");
        assert_eq!(parse("\"order-123\"").unwrap(), "order-123");
    }

    #[test]
    fn quoted_form_unescapes_and_allows_spaces() {
        assert_eq!(parse(r#""a \"b\" \\c""#).unwrap(), r#"a "b" \c"#);
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(parse("  k1\t").unwrap(), "k1");
    }

    #[test]
    fn refuses_malformed_values() {
        assert_eq!(parse(""), Err(KeyError::Empty));
        assert_eq!(parse("   "), Err(KeyError::Empty));
        assert_eq!(parse("\"\""), Err(KeyError::Empty));
        assert_eq!(parse("\" \""), Err(KeyError::Empty));
        assert_eq!(parse("\"    \""), Err(KeyError::Empty));
        assert_eq!(IdempotencyKey::new("  "), Err(KeyError::Empty));
        assert_eq!(parse("\" a \"").unwrap(), " a ");
        assert_eq!(parse("a b"), Err(KeyError::InvalidCharacter { byte: b' ' }));
        assert_eq!(parse("a,b"), Err(KeyError::InvalidCharacter { byte: b',' }));
        assert_eq!(
            parse("a\\b"),
            Err(KeyError::InvalidCharacter { byte: b'\\' })
        );
        assert_eq!(parse("\"open"), Err(KeyError::BadQuoting));
        assert_eq!(parse("\"a\"b"), Err(KeyError::BadQuoting));
        assert_eq!(parse(r#""bad \n escape""#), Err(KeyError::BadQuoting));
        assert_eq!(parse("\"k\";p=1"), Err(KeyError::BadQuoting));
        assert!(matches!(
            IdempotencyKey::parse("é".as_bytes()),
            Err(KeyError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            IdempotencyKey::parse(b"a\x01b"),
            Err(KeyError::InvalidCharacter { byte: 1 })
        ));
    }

    #[test]
    fn length_limit_is_255() {
        assert!(parse(&"k".repeat(255)).is_ok());
        assert_eq!(parse(&"k".repeat(256)), Err(KeyError::TooLong { len: 256 }));
        let quoted = format!("\"{}\"", "k".repeat(256));
        assert_eq!(parse(&quoted), Err(KeyError::TooLong { len: 256 }));
    }

    #[test]
    fn header_must_be_present_once() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Err(KeyError::Missing)
        );
        headers.append("Idempotency-Key", HeaderValue::from_static("a"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers).unwrap().as_str(),
            "a"
        );
        headers.append("IDEMPOTENCY-KEY", HeaderValue::from_static("a"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Err(KeyError::Repeated)
        );
    }
}
