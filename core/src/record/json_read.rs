//! A pull reader for the flat JSON objects of keys and values (RFC 8259).
//!
//! It hands out each member's name and its scalar value as written (a number's exact text, a
//! string's still-escaped contents), so the decoder converts straight from the input bytes:
//! integers and decimals are exact and an `f32` is parsed from its own digits, not through an
//! `f64`. Nested objects and arrays are validated and skipped (allowed only in fields the
//! table does not have). Nothing here recurses without a depth limit or panics on input.

use std::borrow::Cow;
use std::fmt;

/// How deeply an ignored field's value may nest.
const MAX_DEPTH: usize = 64;

/// A scalar JSON value as it appears in the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Raw<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number's text, checked against the JSON grammar.
    Number(&'a str),
    /// A string's contents between the quotes: valid UTF-8, escapes not yet resolved.
    Str {
        /// The contents.
        raw: &'a str,
        /// Whether it contains a backslash escape.
        escaped: bool,
    },
    /// An object or an array.
    Nested,
}

impl<'a> Raw<'a> {
    /// What kind of value this is, for error messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Raw::Null => "null",
            Raw::Bool(_) => "a boolean",
            Raw::Number(_) => "a number",
            Raw::Str { .. } => "a string",
            Raw::Nested => "an object or array",
        }
    }

    /// The string's value with escapes resolved, or `None` if this is not a string.
    pub(super) fn as_str(&self) -> Option<Result<Cow<'a, str>, JsonError>> {
        match *self {
            Raw::Str { raw, escaped } => Some(if escaped {
                unescape(raw).map(Cow::Owned)
            } else {
                Ok(Cow::Borrowed(raw))
            }),
            _ => None,
        }
    }
}

/// Malformed JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JsonError {
    /// Byte position in the key or value.
    pub(super) pos: usize,
    /// What is wrong.
    pub(super) reason: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.pos, self.reason)
    }
}

/// Reads the members of one JSON object, in order.
pub(super) struct ObjectReader<'a> {
    s: &'a [u8],
    pos: usize,
    first: bool,
    done: bool,
}

impl<'a> ObjectReader<'a> {
    /// Starts reading `input`, which must hold a single JSON object.
    pub(super) fn new(input: &'a [u8]) -> Result<Self, JsonError> {
        let mut reader = ObjectReader {
            s: input,
            pos: 0,
            first: true,
            done: false,
        };
        reader.skip_ws();
        if !reader.eat(b'{') {
            return Err(reader.error("expected a JSON object"));
        }
        Ok(reader)
    }

    /// The next member's name and value; `None` after the closing brace (and checks that only
    /// whitespace follows it).
    pub(super) fn next_field(&mut self) -> Result<Option<(Cow<'a, str>, Raw<'a>)>, JsonError> {
        if self.done {
            return Ok(None);
        }
        self.skip_ws();
        if self.first {
            if self.eat(b'}') {
                return self.finish();
            }
            self.first = false;
        } else {
            // A member followed by `}` finished the object already.
            if !self.eat(b',') {
                return Err(self.error("expected `,` or `}`"));
            }
            self.skip_ws();
        }
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a member name"));
        }
        let name = match self.string()? {
            Raw::Str {
                raw,
                escaped: false,
            } => Cow::Borrowed(raw),
            Raw::Str { raw, escaped: true } => Cow::Owned(unescape(raw)?),
            _ => return Err(self.error("expected a member name")),
        };
        self.skip_ws();
        if !self.eat(b':') {
            return Err(self.error("expected `:`"));
        }
        self.skip_ws();
        let value = self.value(0)?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.finish()?;
        }
        Ok(Some((name, value)))
    }

    fn finish(&mut self) -> Result<Option<(Cow<'a, str>, Raw<'a>)>, JsonError> {
        self.done = true;
        self.skip_ws();
        if self.pos != self.s.len() {
            return Err(self.error("unexpected data after the object"));
        }
        Ok(None)
    }

    fn error(&self, reason: &'static str) -> JsonError {
        JsonError {
            pos: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.pos += usize::from(hit);
        hit
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8], value: Raw<'a>) -> Result<Raw<'a>, JsonError> {
        if self.s[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Raw<'a>, JsonError> {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true", Raw::Bool(true)),
            Some(b'f') => self.literal(b"false", Raw::Bool(false)),
            Some(b'n') => self.literal(b"null", Raw::Null),
            Some(open @ (b'{' | b'[')) => {
                if depth >= MAX_DEPTH {
                    return Err(self.error("nested too deeply"));
                }
                self.pos += 1;
                self.container(open == b'{', depth + 1)?;
                Ok(Raw::Nested)
            }
            _ => Err(self.error("expected a JSON value")),
        }
    }

    /// Skips an object's or array's members; the opening bracket is consumed.
    fn container(&mut self, object: bool, depth: usize) -> Result<(), JsonError> {
        let close = if object { b'}' } else { b']' };
        self.skip_ws();
        if self.eat(close) {
            return Ok(());
        }
        loop {
            self.skip_ws();
            if object {
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a member name"));
                }
                self.string()?;
                self.skip_ws();
                if !self.eat(b':') {
                    return Err(self.error("expected `:`"));
                }
                self.skip_ws();
            }
            self.value(depth)?;
            self.skip_ws();
            if self.eat(close) {
                return Ok(());
            }
            if !self.eat(b',') {
                return Err(self.error("expected `,` or a closing bracket"));
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Raw<'a>, JsonError> {
        let start = self.pos;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("expected a digit")),
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.error("expected a digit after `.`"));
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.error("expected an exponent"));
            }
        }
        // The grammar above only admits ASCII.
        let text = std::str::from_utf8(&self.s[start..self.pos])
            .map_err(|_| self.error("invalid number"))?;
        Ok(Raw::Number(text))
    }

    fn string(&mut self) -> Result<Raw<'a>, JsonError> {
        self.pos += 1; // the opening quote
        let start = self.pos;
        let mut escaped = false;
        loop {
            let Some(b) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            match b {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1
                        }
                        Some(b'u') => {
                            let hex = self.s.get(self.pos + 1..self.pos + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.error("invalid \\u escape"));
                            }
                            self.pos += 5;
                        }
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                0..=0x1f => return Err(self.error("control character in a string")),
                _ => self.pos += 1,
            }
        }
        let raw = std::str::from_utf8(&self.s[start..self.pos]).map_err(|e| JsonError {
            pos: start + e.valid_up_to(),
            reason: "invalid UTF-8 in a string",
        })?;
        self.pos += 1; // the closing quote
        Ok(Raw::Str { raw, escaped })
    }
}

fn hex4(s: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(s.get(..4)?).ok()?;
    u32::from_str_radix(text, 16).ok()
}

/// Resolves the escapes of a string's contents (already checked by the reader's grammar;
/// surrogate pairs are checked here).
fn unescape(raw: &str) -> Result<String, JsonError> {
    let bad = |pos, reason| JsonError { pos, reason };
    let s = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < s.len() {
        let Some(offset) = raw[i..].find('\\') else {
            out.push_str(&raw[i..]);
            break;
        };
        out.push_str(&raw[i..i + offset]);
        i += offset + 1;
        let escape = s.get(i).copied().ok_or(bad(i, "invalid escape"))?;
        i += 1;
        let c = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = hex4(&s[i..]).ok_or(bad(i, "invalid \\u escape"))?;
                i += 4;
                let code = match unit {
                    0xd800..=0xdbff => {
                        let low = s
                            .get(i..i + 2)
                            .filter(|p| *p == b"\\u")
                            .and_then(|_| hex4(&s[i + 2..]))
                            .filter(|low| (0xdc00..=0xdfff).contains(low))
                            .ok_or(bad(i, "unpaired surrogate in \\u escape"))?;
                        i += 6;
                        0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                    }
                    0xdc00..=0xdfff => return Err(bad(i, "unpaired surrogate in \\u escape")),
                    _ => unit,
                };
                char::from_u32(code).ok_or(bad(i, "invalid \\u escape"))?
            }
            _ => return Err(bad(i, "invalid escape")),
        };
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn fields(input: &str) -> Result<Vec<(String, String)>, JsonError> {
        let mut reader = ObjectReader::new(input.as_bytes())?;
        let mut out = Vec::new();
        while let Some((name, raw)) = reader.next_field()? {
            let text = match raw {
                Raw::Str { .. } => raw.as_str().unwrap()?.into_owned(),
                Raw::Number(n) => n.to_string(),
                other => format!("{other:?}"),
            };
            out.push((name.into_owned(), text));
        }
        Ok(out)
    }

    #[test]
    fn reads_members_in_order() {
        let got = fields(
            r#" { "a" : 1 , "b\u00e9":"x\ny\uD83D\uDE00", "c":null,"d":[1,{"e":[]}],"f":-0.5e+3 } "#,
        )
        .unwrap();
        let want = [
            ("a", "1"),
            ("bé", "x\ny😀"),
            ("c", "Null"),
            ("d", "Nested"),
            ("f", "-0.5e+3"),
        ];
        assert_eq!(got.len(), want.len());
        for ((name, value), (want_name, want_value)) in got.iter().zip(want) {
            assert_eq!((name.as_str(), value.as_str()), (want_name, want_value));
        }
        assert_eq!(fields("{}").unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed_json() {
        for bad in [
            "",
            "null",
            "[]",
            "{",
            "{,}",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":"x"} x"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":"\uD800"}"#,
            r#"{"a":"\uDC00x"}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":{1:2}}"#,
            r#"{"a":NaN}"#,
            r#"{a:1}"#,
            r#"{"a":1}{"b":2}"#,
        ] {
            assert!(fields(bad).is_err(), "{bad}");
        }
        let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        assert!(fields(&deep).is_err());
        let invalid_utf8 = b"{\"a\":\"\xff\"}";
        let err = ObjectReader::new(invalid_utf8)
            .and_then(|mut r| r.next_field().map(|_| ()))
            .unwrap_err();
        assert_eq!(err.reason, "invalid UTF-8 in a string");
    }

    proptest! {
        /// Whatever serde_json writes for a flat object, this reader reads back the same.
        #[test]
        fn agrees_with_serde_json(members in prop::collection::vec(
            ("\\PC{0,8}", prop_oneof![
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
                "\\PC{0,12}".prop_map(serde_json::Value::from),
                any::<bool>().prop_map(serde_json::Value::from),
                Just(serde_json::Value::Null),
            ]),
            0..6,
        )) {
            let mut map = serde_json::Map::new();
            for (k, v) in &members {
                map.insert(k.clone(), v.clone());
            }
            let text = serde_json::to_string(&serde_json::Value::Object(map.clone())).unwrap();
            let mut reader = ObjectReader::new(text.as_bytes()).unwrap();
            let mut seen = 0;
            while let Some((name, raw)) = reader.next_field().unwrap() {
                let expected = &map[name.as_ref()];
                match raw {
                    Raw::Null => prop_assert!(expected.is_null()),
                    Raw::Bool(b) => prop_assert_eq!(Some(b), expected.as_bool()),
                    // (serde_json's own float parsing is not always correctly rounded.)
                    Raw::Number(n) => match expected.as_i64() {
                        Some(i) => prop_assert_eq!(n.parse::<i64>().ok(), Some(i)),
                        None => prop_assert_eq!(n.parse::<f64>().ok(), expected.as_f64()),
                    },
                    Raw::Str { .. } => {
                        let s = raw.as_str().unwrap().unwrap();
                        prop_assert_eq!(Some(s.as_ref()), expected.as_str());
                    }
                    Raw::Nested => prop_assert!(false, "no nesting written"),
                }
                seen += 1;
            }
            prop_assert_eq!(seen, map.len());
        }
    }
}
