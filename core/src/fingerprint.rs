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
/// The document is read once and written out canonically as it goes, without building a
/// tree: members of each object are sorted by their decoded key (the last of duplicate keys
/// wins), strings are re-escaped one way, numbers keep their text with the exponent written
/// `e` followed by its sign. What is accepted as JSON, and the bytes written, are those of
/// `serde_json` (with its `arbitrary_precision` feature) parsing into a `Value` and the
/// value written back with sorted keys, which is how version 1 was first defined; the tests
/// compare the two.
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let mut canonical = Canonicalizer {
        input: body,
        pos: 0,
        out: Vec::with_capacity(body.len()),
        keys: Vec::new(),
        members: Vec::new(),
        reordered: Vec::new(),
    };
    canonical.skip_whitespace();
    canonical.value(MAX_DEPTH)?;
    canonical.skip_whitespace();
    (canonical.pos == body.len()).then_some(canonical.out)
}

/// Nesting allowance: a document may nest arrays and objects 127 deep, as `serde_json`
/// allows.
const MAX_DEPTH: u8 = 128;

/// The first key that `serde_json` reads as a number written as a string.
const NUMBER_TOKEN: &[u8] = b"$serde_json::private::Number";

/// One member of the object being read: its decoded key in `keys` and its canonical
/// `"key":value` text in `out`.
#[derive(Clone, Copy)]
struct Member {
    key: (usize, usize),
    text: (usize, usize),
}

struct Canonicalizer<'a> {
    input: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    /// Decoded keys of the objects being read, innermost last.
    keys: Vec<u8>,
    /// Members of the objects being read, innermost last.
    members: Vec<Member>,
    /// Room to sort one object's members in.
    reordered: Vec<u8>,
}

impl Canonicalizer<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Reads one value at `pos` (after whitespace) and writes its canonical form.
    fn value(&mut self, depth: u8) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth.checked_sub(1).filter(|d| *d > 0)?),
            b'[' => self.array(depth.checked_sub(1).filter(|d| *d > 0)?),
            b'"' => {
                self.pos += 1;
                self.string(false)
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                let end = number_end(self.input, start)?;
                self.pos = end;
                write_number(&self.input[start..end], &mut self.out);
                Some(())
            }
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.input.get(self.pos..end)? == word).then_some(())?;
        self.pos = end;
        self.out.extend_from_slice(word);
        Some(())
    }

    fn array(&mut self, depth: u8) -> Option<()> {
        self.pos += 1;
        self.out.push(b'[');
        self.skip_whitespace();
        if self.peek()? == b']' {
            self.pos += 1;
            self.out.push(b']');
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.skip_whitespace();
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    self.out.push(b',');
                    self.skip_whitespace();
                    if self.peek()? == b']' {
                        return None;
                    }
                }
                b']' => {
                    self.pos += 1;
                    self.out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: u8) -> Option<()> {
        self.pos += 1;
        let start = self.out.len();
        self.out.push(b'{');
        self.skip_whitespace();
        if self.peek()? == b'}' {
            self.pos += 1;
            self.out.push(b'}');
            return Some(());
        }

        let first_member = self.members.len();
        let first_key = self.keys.len();
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            self.pos += 1;
            let key_start = self.keys.len();
            if self.members.len() > first_member {
                self.out.push(b',');
            }
            let text_start = self.out.len();
            self.string(true)?;
            let key = (key_start, self.keys.len());
            if self.members.len() == first_member && &self.keys[key.0..key.1] == NUMBER_TOKEN {
                self.out.truncate(start);
                self.keys.truncate(first_key);
                return self.number_in_string();
            }

            self.skip_whitespace();
            if self.peek()? != b':' {
                return None;
            }
            self.pos += 1;
            self.out.push(b':');
            self.skip_whitespace();
            self.value(depth)?;
            self.members.push(Member {
                key,
                text: (text_start, self.out.len()),
            });

            self.skip_whitespace();
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                b'}' => {
                    self.pos += 1;
                    break;
                }
                _ => return None,
            }
        }

        self.sort_members(first_member, start + 1);
        self.out.push(b'}');
        self.members.truncate(first_member);
        self.keys.truncate(first_key);
        Some(())
    }

    /// Puts the members from `first` on, written from `body_start` on, in key order, and
    /// keeps only the last of equal keys.
    fn sort_members(&mut self, first: usize, body_start: usize) {
        let keys = &self.keys;
        let key = |m: &Member| &keys[m.key.0..m.key.1];
        let members = &mut self.members[first..];
        if members.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
            return;
        }

        // A stable sort keeps equal keys in document order, so the last of each run is the
        // one a map would have kept.
        members.sort_by(|a, b| key(a).cmp(key(b)));
        self.reordered.clear();
        self.reordered.extend_from_slice(&self.out[body_start..]);
        self.out.truncate(body_start);
        let mut written = false;
        for (i, member) in members.iter().enumerate() {
            if members
                .get(i + 1)
                .is_some_and(|next| key(next) == key(member))
            {
                continue;
            }
            if written {
                self.out.push(b',');
            }
            let (start, end) = member.text;
            self.out
                .extend_from_slice(&self.reordered[start - body_start..end - body_start]);
            written = true;
        }
    }

    /// The value of an object whose first key is [`NUMBER_TOKEN`]: a string holding a
    /// number, which stands for that number; the object must end after it.
    fn number_in_string(&mut self) -> Option<()> {
        self.skip_whitespace();
        if self.peek()? != b':' {
            return None;
        }
        self.pos += 1;
        self.skip_whitespace();
        if self.peek()? != b'"' {
            return None;
        }
        self.pos += 1;

        // Decode the string into `keys`, past anything still in use, then check it.
        let text_start = self.keys.len();
        let out_len = self.out.len();
        self.string(true)?;
        self.out.truncate(out_len);
        let text = self.keys.split_off(text_start);
        if number_end(&text, 0)? != text.len() {
            return None;
        }
        write_number(&text, &mut self.out);

        self.skip_whitespace();
        if self.peek()? != b'}' {
            return None;
        }
        self.pos += 1;
        Some(())
    }

    /// Reads a string whose opening quote was consumed and writes it re-escaped; with
    /// `decoded`, also appends its decoded bytes to `keys`.
    fn string(&mut self, decoded: bool) -> Option<()> {
        self.out.push(b'"');
        loop {
            let run_start = self.pos;
            let run_len = self.input[run_start..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            let run = &self.input[run_start..run_start + run_len];
            if !run.is_ascii() {
                std::str::from_utf8(run).ok()?;
            }
            self.out.extend_from_slice(run);
            if decoded {
                self.keys.extend_from_slice(run);
            }
            self.pos += run_len;

            match self.input[self.pos] {
                b'"' => {
                    self.pos += 1;
                    self.out.push(b'"');
                    return Some(());
                }
                b'\\' => {
                    self.pos += 1;
                    let c = self.escape()?;
                    write_char(c, &mut self.out);
                    if decoded {
                        let mut utf8 = [0; 4];
                        self.keys
                            .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                    }
                }
                _ => return None,
            }
        }
    }

    /// Reads an escape after its backslash.
    fn escape(&mut self) -> Option<char> {
        let c = match self.peek()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                self.pos += 1;
                let high = self.hex4()?;
                return match high {
                    0xDC00..=0xDFFF => None,
                    0xD800..=0xDBFF => {
                        if self.input.get(self.pos..self.pos + 2)? != b"\\u" {
                            return None;
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        let code = 0x1_0000
                            + ((u32::from(high) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        char::from_u32(code)
                    }
                    _ => char::from_u32(u32::from(high)),
                };
            }
            _ => return None,
        };
        self.pos += 1;
        Some(c)
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.input.get(self.pos..self.pos + 4)?;
        let mut value = 0u16;
        for &d in digits {
            let nibble = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return None,
            };
            value = value << 4 | u16::from(nibble);
        }
        self.pos += 4;
        Some(value)
    }
}

/// Where the JSON number starting at `start` ends, or `None` when it is malformed.
fn number_end(input: &[u8], start: usize) -> Option<usize> {
    let digits = |from: usize| {
        input[from..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(input.len(), |n| from + n)
    };
    let mut pos = start;
    if input.get(pos) == Some(&b'-') {
        pos += 1;
    }
    match input.get(pos)? {
        b'0' => {
            pos += 1;
            if input.get(pos).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        }
        b'1'..=b'9' => pos = digits(pos + 1),
        _ => return None,
    }
    if input.get(pos) == Some(&b'.') {
        let end = digits(pos + 1);
        if end == pos + 1 {
            return None;
        }
        pos = end;
    }
    if let Some(b'e' | b'E') = input.get(pos) {
        pos += 1;
        if let Some(b'+' | b'-') = input.get(pos) {
            pos += 1;
        }
        let end = digits(pos);
        if end == pos {
            return None;
        }
        pos = end;
    }
    Some(pos)
}

/// Writes a well-formed JSON number with its exponent as `e` and an explicit sign.
fn write_number(number: &[u8], out: &mut Vec<u8>) {
    match number.iter().position(|b| matches!(b, b'e' | b'E')) {
        None => out.extend_from_slice(number),
        Some(e) => {
            out.extend_from_slice(&number[..e]);
            out.push(b'e');
            let exponent = &number[e + 1..];
            if !matches!(exponent.first(), Some(b'+' | b'-')) {
                out.push(b'+');
            }
            out.extend_from_slice(exponent);
        }
    }
}

/// Writes one decoded string character in canonical escaped form.
fn write_char(c: char, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match c {
        '"' => out.extend_from_slice(b"\\\""),
        '\\' => out.extend_from_slice(b"\\\\"),
        '\u{8}' => out.extend_from_slice(b"\\b"),
        '\u{c}' => out.extend_from_slice(b"\\f"),
        '\n' => out.extend_from_slice(b"\\n"),
        '\r' => out.extend_from_slice(b"\\r"),
        '\t' => out.extend_from_slice(b"\\t"),
        c if u32::from(c) < 0x20 => {
            let b = c as u8;
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xF)]);
        }
        c => {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
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

    /// Version 1 as first defined: parse into a `Value`, write back with sorted keys.
    fn canonical_through_value(body: &[u8]) -> Option<Vec<u8>> {
        use serde_json::Value;

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
                        serde_json::to_writer(&mut *out, key).unwrap();
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
                Value::String(s) => serde_json::to_writer(&mut *out, s).unwrap(),
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

    fn assert_same_as_value(doc: &[u8]) {
        assert_eq!(
            canonical_json(doc).map(|c| String::from_utf8_lossy(&c).into_owned()),
            canonical_through_value(doc).map(|c| String::from_utf8_lossy(&c).into_owned()),
            "document {:?}",
            String::from_utf8_lossy(doc)
        );
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    const KEYS: &[&str] = &[
        "a",
        "b",
        "\\u0061",
        "A",
        "",
        "ab",
        "a\\\"",
        "\\n",
        "é",
        "\\u00e9",
        "z",
        "\\uD83D\\uDE00",
        "😀",
        "$serde_json::private::Number",
        "\\/",
        "\\u001F",
    ];
    const STRINGS: &[&str] = &[
        "",
        "plain",
        "\\\"",
        "\\\\",
        "\\/",
        "\\b\\f\\n\\r\\t",
        "\\u0000\\u001f\\u007F",
        "\\u00E9",
        "é😀",
        "\\uD83D\\uDE00",
        "\\udbff\\udfff",
        "\\u2028",
        "\u{7f}",
        "tab\\tend",
        "1e5",
        "-0.5E-3",
        "12",
        "x y",
    ];
    const NUMBERS: &[&str] = &[
        "0",
        "-0",
        "1",
        "-1",
        "10",
        "1.50",
        "0.0",
        "1E5",
        "1e5",
        "1e+5",
        "1E-5",
        "-12.5E+3",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890.5e-400",
    ];
    const SPACE: &[&str] = &["", "", "", " ", "\n", "\t", "\r\n  "];

    fn generate(rng: &mut Rng, depth: usize, out: &mut String) {
        let space = |rng: &mut Rng, out: &mut String| out.push_str(rng.pick(SPACE));
        let choice = if depth == 0 {
            rng.below(4)
        } else {
            rng.below(7)
        };
        match choice {
            0 => out.push_str(rng.pick(NUMBERS)),
            1 => {
                out.push('"');
                out.push_str(rng.pick(STRINGS));
                out.push('"');
            }
            2 => out.push_str(rng.pick(&["true", "false", "null"])),
            3 => out.push_str(rng.pick(&["{}", "[]", "[ ]", "{ }"])),
            4 => {
                out.push('[');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    space(rng, out);
                    generate(rng, depth - 1, out);
                    space(rng, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..rng.below(5) {
                    if i > 0 {
                        out.push(',');
                    }
                    space(rng, out);
                    out.push('"');
                    out.push_str(rng.pick(KEYS));
                    out.push('"');
                    space(rng, out);
                    out.push(':');
                    space(rng, out);
                    if rng.below(4) == 0 {
                        out.push('"');
                        out.push_str(rng.pick(NUMBERS));
                        out.push('"');
                    } else {
                        generate(rng, depth - 1, out);
                    }
                    space(rng, out);
                }
                out.push('}');
            }
        }
    }

    /// Breaks a document in one of the ways clients do: a byte lost, added or changed.
    fn mutate(rng: &mut Rng, doc: &mut Vec<u8>) {
        const BYTES: &[u8] = b"{}[]\",:\\/ \n\x00\x1f\x7f\xc3\xa9\xff0123456789.eE+-tfnu";
        if doc.is_empty() {
            return;
        }
        let at = rng.below(doc.len());
        match rng.below(4) {
            0 => {
                doc.remove(at);
            }
            1 => doc.insert(at, BYTES[rng.below(BYTES.len())]),
            2 => doc[at] = BYTES[rng.below(BYTES.len())],
            _ => doc.truncate(at),
        }
    }

    #[test]
    fn canonical_form_matches_the_value_based_definition_on_generated_documents() {
        let mut rng = Rng(0x5eed_cafe_f00d_d00d);
        let mut valid = 0;
        for _ in 0..20_000 {
            let mut doc = String::new();
            let space = rng.pick(SPACE);
            doc.push_str(space);
            generate(&mut rng, 4, &mut doc);
            doc.push_str(space);
            let mut doc = doc.into_bytes();
            assert_same_as_value(&doc);
            valid += usize::from(canonical_json(&doc).is_some());
            for _ in 0..rng.below(3) {
                mutate(&mut rng, &mut doc);
                assert_same_as_value(&doc);
            }
        }
        assert!(valid > 10_000, "most generated documents are JSON: {valid}");
    }

    #[test]
    fn canonical_form_matches_the_value_based_definition_on_edge_cases() {
        let cases: &[&[u8]] = &[
            b"",
            b" ",
            b"{",
            b"}",
            b"[",
            b"[1,]",
            b"{\"a\":1,}",
            b"{\"a\"1}",
            b"{1:2}",
            b"01",
            b"-",
            b"-01",
            b"1.",
            b"1.e5",
            b"1e",
            b"1e+",
            b".5",
            b"+1",
            b"tru",
            b"truex",
            b"nul",
            b"1 2",
            b"\"a",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"\\uD800\"",
            b"\"\\uDC00\"",
            b"\"\\uD800\\u0041\"",
            b"\"\\uD800\\n\"",
            b"\"\\uD800x\"",
            b"\"\x01\"",
            b"\"\xff\"",
            b"\"\xc3\"",
            b"\"\xc3\\u00a9\"",
            b"\"\xed\xa0\x80\"",
            b"\"\\u00\"",
            b"{\"b\":1,\"a\":2,\"b\":3}",
            b"{\"a\":1,\"\\u0061\":2}",
            b"{\"$serde_json::private::Number\":\"12\"}",
            b"{\"$serde_json::private::Number\":\"1E5\"}",
            b"{\"$serde_json::private::Number\":\"\\u0031\"}",
            b"{\"$serde_json::private::Number\":\" 1\"}",
            b"{\"$serde_json::private::Number\":\"1 \"}",
            b"{\"$serde_json::private::Number\":\"x\"}",
            b"{\"$serde_json::private::Number\":12}",
            b"{\"$serde_json::private::Number\":\"1\",\"a\":2}",
            b"{ \"$serde_json::private::Number\" : \"-0.5\" }",
            b"{\"a\":1,\"$serde_json::private::Number\":\"12\"}",
            b"{\"$serde_json::private::\\u004Eumber\":\"7\"}",
            b"[{\"$serde_json::private::Number\":\"3\"}]",
        ];
        for case in cases {
            assert_same_as_value(case);
        }
    }

    #[test]
    fn nesting_is_limited_as_serde_json_limits_it() {
        for depth in [126, 127, 128, 129] {
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert_same_as_value(arrays.as_bytes());
            let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            assert_same_as_value(objects.as_bytes());
        }
        assert!(
            canonical_json(format!("{}{}", "[".repeat(127), "]".repeat(127)).as_bytes()).is_some()
        );
        assert!(
            canonical_json(format!("{}{}", "[".repeat(128), "]".repeat(128)).as_bytes()).is_none()
        );
    }

    #[test]
    fn json_media_types_are_matched_without_regard_to_case() {
        let mut h = HeaderMap::new();
        for (value, json) in [
            ("Application/JSON", true),
            ("application/json ; charset=utf-8", true),
            ("APPLICATION/PROBLEM+JSON", true),
            ("application/+json", true),
            ("application/jsonx", false),
            ("application/json+xml", false),
            ("+json", false),
            ("", false),
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&h), json, "{value}");
        }
    }
}
