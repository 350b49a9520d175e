//! A small JSON writer that appends straight into a `Vec<u8>`: the encoder's hot path.
//!
//! The bytes it writes for a key are hashed into a bucket, so every function here is part of
//! the format: changing any output byte for some input moves keys between partitions. The
//! string escaping matches Jackson's default (what Flink and the Java Kafka tools write):
//! `"` `\` and the control characters U+0000..U+001F are escaped, `\b \t \n \f \r` in their
//! short form and the rest as `\u00XX` with upper-case hex digits; `/`, U+007F, U+2028, U+2029
//! and all other non-ASCII characters are written as raw UTF-8.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::convert::{MICROS_PER_DAY, civil_from_days};

/// Per-byte escape action: 0 = copy, `u` = `\u00XX`, anything else = backslash + that byte.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `s` as a JSON string (with quotes).
pub(super) fn write_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let action = ESCAPE[usize::from(b)];
        if action == 0 {
            continue;
        }
        buf.extend_from_slice(&bytes[start..i]);
        if action == b'u' {
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX_UPPER[usize::from(b >> 4)]);
            buf.push(HEX_UPPER[usize::from(b & 0xf)]);
        } else {
            buf.push(b'\\');
            buf.push(action);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// Appends the decimal digits of `v` (no sign), at least `min_digits` of them (zero-padded).
fn write_digits(buf: &mut Vec<u8>, mut v: u128, min_digits: usize) {
    let mut tmp = [0u8; 40];
    let mut pos = tmp.len();
    loop {
        pos -= 1;
        tmp[pos] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let digits = tmp.len() - pos;
    for _ in digits..min_digits {
        buf.push(b'0');
    }
    buf.extend_from_slice(&tmp[pos..]);
}

/// Appends `v` as a JSON integer.
pub(super) fn write_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    write_digits(buf, u128::from(v.unsigned_abs()), 1);
}

/// Appends a finite `f64` in its shortest round-trip form (a JSON number), or NaN and the
/// infinities as the JSON strings `"NaN"`, `"Infinity"` and `"-Infinity"`.
pub(super) fn write_f64(buf: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        // serde_json writes the shortest digits that parse back to the same value.
        if serde_json::to_writer(&mut *buf, &v).is_err() {
            buf.extend_from_slice(b"null"); // Writing to a Vec cannot fail.
        }
    } else {
        write_non_finite(buf, v.is_nan(), v > 0.0);
    }
}

/// Like [`write_f64`] for `f32`: the shortest digits that parse back to the same `f32`.
pub(super) fn write_f32(buf: &mut Vec<u8>, v: f32) {
    if v.is_finite() {
        if serde_json::to_writer(&mut *buf, &v).is_err() {
            buf.extend_from_slice(b"null");
        }
    } else {
        write_non_finite(buf, v.is_nan(), v > 0.0);
    }
}

fn write_non_finite(buf: &mut Vec<u8>, nan: bool, positive: bool) {
    buf.extend_from_slice(match (nan, positive) {
        (true, _) => b"\"NaN\"".as_slice(),
        (false, true) => b"\"Infinity\"",
        (false, false) => b"\"-Infinity\"",
    });
}

/// Appends an unscaled decimal as a JSON string with exactly `scale` fraction digits.
pub(super) fn write_decimal(buf: &mut Vec<u8>, unscaled: i128, scale: u32) {
    buf.push(b'"');
    if unscaled < 0 {
        buf.push(b'-');
    }
    let scale = scale as usize;
    write_digits(buf, unscaled.unsigned_abs(), scale + 1);
    if scale > 0 {
        let point = buf.len() - scale;
        buf.insert(point, b'.');
    }
    buf.push(b'"');
}

/// Appends bytes as a JSON string of standard base64 (RFC 4648 section 4, with padding).
pub(super) fn write_base64(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.push(b'"');
    let start = buf.len();
    let encoded_len = bytes.len().div_ceil(3) * 4;
    buf.resize(start + encoded_len, 0);
    let written = STANDARD.encode_slice(bytes, &mut buf[start..]).unwrap_or(0);
    buf.truncate(start + written);
    buf.push(b'"');
}

/// Appends an ISO-8601 year: 4 digits for 0..=9999, else a sign and at least 4 digits
/// (`+10000`, `-0001`), as `java.time` writes and reads it.
fn write_year(buf: &mut Vec<u8>, year: i64) {
    if year > 9999 {
        buf.push(b'+');
    } else if year < 0 {
        buf.push(b'-');
    }
    write_digits(buf, u128::from(year.unsigned_abs()), 4);
}

fn write_2(buf: &mut Vec<u8>, v: u32) {
    buf.push(b'0' + (v / 10 % 10) as u8);
    buf.push(b'0' + (v % 10) as u8);
}

fn write_date_parts(buf: &mut Vec<u8>, days: i64) {
    let (year, month, day) = civil_from_days(days);
    write_year(buf, year);
    buf.push(b'-');
    write_2(buf, month);
    buf.push(b'-');
    write_2(buf, day);
}

/// Appends days since 1970-01-01 as the JSON string `"YYYY-MM-DD"`.
pub(super) fn write_date(buf: &mut Vec<u8>, days: i32) {
    buf.push(b'"');
    write_date_parts(buf, i64::from(days));
    buf.push(b'"');
}

/// Appends microseconds since the epoch as `"YYYY-MM-DDTHH:MM:SS.ffffff"`, with a trailing
/// `Z` when `utc` (timestamptz).
pub(super) fn write_timestamp(buf: &mut Vec<u8>, micros: i64, utc: bool) {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let secs = (in_day / 1_000_000) as u32;
    let frac = (in_day % 1_000_000) as u128;
    buf.push(b'"');
    write_date_parts(buf, days);
    buf.push(b'T');
    write_2(buf, secs / 3600);
    buf.push(b':');
    write_2(buf, secs / 60 % 60);
    buf.push(b':');
    write_2(buf, secs % 60);
    buf.push(b'.');
    write_digits(buf, frac, 6);
    if utc {
        buf.push(b'Z');
    }
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut buf = Vec::new();
        f(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn strings_escape_like_jackson() {
        assert_eq!(out(|b| write_str(b, "")), r#""""#);
        assert_eq!(out(|b| write_str(b, "a\"b\\c/d")), r#""a\"b\\c/d""#);
        assert_eq!(
            out(|b| write_str(b, "\u{8}\t\n\u{c}\r\u{0}\u{1f}\u{7f}")),
            "\"\\b\\t\\n\\f\\r\\u0000\\u001F\u{7f}\""
        );
        assert_eq!(
            out(|b| write_str(b, "é\u{2028}\u{2029}😀")),
            "\"é\u{2028}\u{2029}😀\""
        );
        // Every string is read back unchanged by a standard parser.
        let all: String = (0u32..0x800).filter_map(char::from_u32).collect();
        let json = out(|b| write_str(b, &all));
        assert_eq!(serde_json::from_str::<String>(&json).unwrap(), all);
    }

    #[test]
    fn numbers() {
        assert_eq!(out(|b| write_i64(b, 0)), "0");
        assert_eq!(out(|b| write_i64(b, i64::MIN)), "-9223372036854775808");
        assert_eq!(out(|b| write_i64(b, i64::MAX)), "9223372036854775807");
        assert_eq!(out(|b| write_f64(b, 1.0)), "1.0");
        assert_eq!(out(|b| write_f64(b, -0.0)), "-0.0");
        assert_eq!(out(|b| write_f64(b, f64::NAN)), r#""NaN""#);
        assert_eq!(out(|b| write_f64(b, f64::INFINITY)), r#""Infinity""#);
        assert_eq!(out(|b| write_f64(b, f64::NEG_INFINITY)), r#""-Infinity""#);
        assert_eq!(out(|b| write_f32(b, 0.1)), "0.1");
        assert_eq!(out(|b| write_f32(b, f32::NAN)), r#""NaN""#);
    }

    #[test]
    fn decimals_have_exactly_scale_fraction_digits() {
        assert_eq!(out(|b| write_decimal(b, 1230, 2)), r#""12.30""#);
        assert_eq!(out(|b| write_decimal(b, -5, 2)), r#""-0.05""#);
        assert_eq!(out(|b| write_decimal(b, 0, 3)), r#""0.000""#);
        assert_eq!(out(|b| write_decimal(b, -42, 0)), r#""-42""#);
        let max = 10i128.pow(38) - 1;
        assert_eq!(
            out(|b| write_decimal(b, -max, 38)),
            format!("\"-0.{}\"", "9".repeat(38))
        );
    }

    #[test]
    fn base64_is_standard_with_padding() {
        assert_eq!(out(|b| write_base64(b, b"")), r#""""#);
        assert_eq!(out(|b| write_base64(b, b"f")), r#""Zg==""#);
        assert_eq!(out(|b| write_base64(b, &[0xfb, 0xff])), r#""+/8=""#);
    }

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(out(|b| write_date(b, 0)), r#""1970-01-01""#);
        assert_eq!(out(|b| write_date(b, -1)), r#""1969-12-31""#);
        assert_eq!(out(|b| write_date(b, -719_528)), r#""0000-01-01""#);
        assert_eq!(out(|b| write_date(b, -719_529)), r#""-0001-12-31""#);
        assert_eq!(out(|b| write_date(b, 2_932_897)), r#""+10000-01-01""#);
        assert_eq!(
            out(|b| write_timestamp(b, -1, false)),
            r#""1969-12-31T23:59:59.999999""#
        );
        assert_eq!(
            out(|b| write_timestamp(b, 1_700_000_000_123_456, true)),
            r#""2023-11-14T22:13:20.123456Z""#
        );
        assert_eq!(
            out(|b| write_timestamp(b, i64::MIN, true)),
            r#""-290308-12-21T19:59:05.224192Z""#
        );
        assert_eq!(
            out(|b| write_timestamp(b, i64::MAX, false)),
            r#""+294247-01-10T04:00:54.775807""#
        );
    }
}
