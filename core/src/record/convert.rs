//! Text forms of the non-JSON-native types: the proleptic Gregorian calendar behind dates and
//! timestamps, and exact decimal parsing.
//!
//! The calendar arithmetic covers every `i32` day and every `i64` microsecond (about ±290,000
//! years), well past chrono's range, so every value Arrow can hold has a text form. Parsing
//! is strict about shape and lenient only where a value is unambiguous (see the `parse_*`
//! docs and docs/changelog-format.md).

/// Microseconds in a day.
pub(super) const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days from 1970-01-01 to 0000-03-01 in the proleptic Gregorian calendar.
const DAYS_0000_03_01_TO_EPOCH: i64 = 719_468;
/// Days in a 400-year Gregorian cycle.
const DAYS_PER_ERA: i64 = 146_097;

/// The civil date `(year, month, day)` of a day number (days since 1970-01-01).
///
/// Years run from March so that the leap day is the last day of a year; a 400-year era then
/// repeats exactly.
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + DAYS_0000_03_01_TO_EPOCH;
    let era = z.div_euclid(DAYS_PER_ERA);
    let day_of_era = z.rem_euclid(DAYS_PER_ERA); // 0..=146096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    (year, month, day)
}

/// The day number of a valid civil date (the inverse of [`civil_from_days`]).
pub(super) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - DAYS_0000_03_01_TO_EPOCH
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A cursor over ASCII text for the date and timestamp grammars.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.pos += usize::from(hit);
        hit
    }

    fn expect(&mut self, b: u8, what: &str) -> Result<(), String> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(format!("expected `{}` {what}", char::from(b)))
        }
    }

    /// Up to `max` ASCII digits (at least `min`) as a number, with how many there were.
    fn digits(&mut self, min: usize, max: usize, what: &str) -> Result<(i64, usize), String> {
        let start = self.pos;
        let mut v: i64 = 0;
        while self.pos - start < max {
            match self.peek() {
                Some(b @ b'0'..=b'9') => {
                    v = v * 10 + i64::from(b - b'0');
                    self.pos += 1;
                }
                _ => break,
            }
        }
        let n = self.pos - start;
        if n < min {
            return Err(format!("expected {min} digits for the {what}"));
        }
        Ok((v, n))
    }

    fn two(&mut self, what: &str, max: i64) -> Result<u32, String> {
        let (v, _) = self.digits(2, 2, what)?;
        if v > max {
            return Err(format!("{what} {v} is out of range"));
        }
        Ok(v as u32)
    }

    fn at_end(&self) -> bool {
        self.pos == self.s.len()
    }
}

/// `[+|-]YYYY-MM-DD` → day number. Unsigned years have exactly 4 digits; signed ones 4 to 9.
fn date_prefix(c: &mut Cursor<'_>) -> Result<i64, String> {
    let sign = match c.peek() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => 0,
    };
    c.pos += usize::from(sign != 0);
    let max_year_digits = if sign == 0 { 4 } else { 9 };
    let (year, _) = c.digits(4, max_year_digits, "year")?;
    let year = if sign < 0 { -year } else { year };
    c.expect(b'-', "after the year")?;
    let month = c.two("month", 12)?;
    c.expect(b'-', "after the month")?;
    let day = c.two("day", 31)?;
    if month == 0 || day == 0 || day > days_in_month(year, month) {
        return Err(format!("{year}-{month:02}-{day:02} is not a calendar date"));
    }
    Ok(days_from_civil(year, month, day))
}

/// Parses `YYYY-MM-DD` (years outside 0000..=9999 written `+10000` / `-0001`) into days since
/// 1970-01-01.
pub(super) fn parse_date(text: &str) -> Result<i32, String> {
    let mut c = Cursor {
        s: text.as_bytes(),
        pos: 0,
    };
    let days = date_prefix(&mut c)?;
    if !c.at_end() {
        return Err("unexpected text after the date (expected `YYYY-MM-DD`)".into());
    }
    i32::try_from(days).map_err(|_| "date is out of range".to_string())
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.f]` into microseconds since the epoch.
///
/// The separator may be `T`, `t` or a space; the fraction has 0 to 9 digits, and digits past
/// the sixth must be zero (no silent truncation). With `utc` (timestamptz) a zone is required:
/// `Z`/`z` or an offset `+HH:MM`/`-HH:MM`/`+HHMM`, converted to UTC; without it (timestamp) a
/// zone is an error.
pub(super) fn parse_timestamp(text: &str, utc: bool) -> Result<i64, String> {
    let mut c = Cursor {
        s: text.as_bytes(),
        pos: 0,
    };
    let days = date_prefix(&mut c)?;
    if !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
        return Err("expected `T` between date and time".into());
    }
    let hour = c.two("hour", 23)?;
    c.expect(b':', "after the hour")?;
    let minute = c.two("minute", 59)?;
    c.expect(b':', "after the minute")?;
    let second = c.two("second", 59)?;
    let mut micros_of_second = 0i64;
    if c.eat(b'.') {
        let (frac, n) = c.digits(1, 9, "fraction")?;
        if n <= 6 {
            micros_of_second = frac * 10i64.pow(6 - n as u32);
        } else {
            let below = 10i64.pow(n as u32 - 6);
            if frac % below != 0 {
                return Err("has more than 6 fraction digits (sub-microsecond precision)".into());
            }
            micros_of_second = frac / below;
        }
    }
    let mut offset_secs = 0i64;
    if utc {
        if !(c.eat(b'Z') || c.eat(b'z')) {
            let sign = match c.peek() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return Err("a timestamptz needs a zone: `Z` or `+HH:MM`".into()),
            };
            c.pos += 1;
            let hours = c.two("offset hour", 18)?;
            c.eat(b':');
            let minutes = c.two("offset minute", 59)?;
            offset_secs = sign * (i64::from(hours) * 3600 + i64::from(minutes) * 60);
        }
    } else if !c.at_end() {
        return Err(
            "unexpected text after the time (a timestamp has no zone; expected `YYYY-MM-DDTHH:MM:SS.ffffff`)"
                .into(),
        );
    }
    if !c.at_end() {
        return Err("unexpected text after the zone".into());
    }
    let secs_of_day = i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    let micros = i128::from(days) * i128::from(MICROS_PER_DAY)
        + i128::from(secs_of_day - offset_secs) * 1_000_000
        + i128::from(micros_of_second);
    i64::try_from(micros).map_err(|_| "timestamp is out of range".to_string())
}

/// Parses a decimal number into its unscaled value at `scale`, checking it fits `precision`.
///
/// Accepts an optional sign, digits with an optional point and an optional exponent
/// (`12.3`, `-0.05`, `1.5E+3`, `.5`). Fewer fraction digits than `scale` are padded; more are
/// accepted only when the extra digits are zeros (a value is never rounded).
pub(super) fn parse_decimal(text: &str, precision: u32, scale: u32) -> Result<i128, String> {
    let bad = || format!("`{text}` is not a decimal number");
    let s = text.as_bytes();
    let (negative, mut i) = match s.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    // The digits without leading and trailing zeros, and the zeros after the last non-zero one.
    let mut mantissa: i128 = 0;
    let mut mantissa_digits: i64 = 0;
    let mut trailing_zeros: i64 = 0;
    let mut any_digit = false;
    let mut fraction_len: i64 = 0;
    let mut seen_point = false;
    while let Some(&b) = s.get(i) {
        match b {
            b'0'..=b'9' => {
                any_digit = true;
                fraction_len += i64::from(seen_point);
                if b == b'0' {
                    trailing_zeros += i64::from(mantissa_digits > 0);
                } else {
                    mantissa_digits += trailing_zeros + 1;
                    if mantissa_digits > 38 {
                        return Err(format!("`{text}` has more than 38 significant digits"));
                    }
                    for _ in 0..trailing_zeros {
                        mantissa *= 10;
                    }
                    trailing_zeros = 0;
                    mantissa = mantissa * 10 + i128::from(b - b'0');
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => break,
        }
        i += 1;
    }
    if !any_digit {
        return Err(bad());
    }
    let mut exponent: i64 = 0;
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exp_negative = match s.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while let Some(&b @ b'0'..=b'9') = s.get(i) {
            exponent = (exponent * 10 + i64::from(b - b'0')).min(1_000_000_000);
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        if exp_negative {
            exponent = -exponent;
        }
    }
    if i != s.len() {
        return Err(bad());
    }
    if mantissa == 0 {
        return Ok(0);
    }
    // value = mantissa * 10^(trailing_zeros + exponent - fraction_len); unscaled = value * 10^scale.
    let shift = trailing_zeros + exponent - fraction_len + i64::from(scale);
    if shift < 0 {
        return Err(format!(
            "`{text}` has more than {scale} fraction digits (values are never rounded)"
        ));
    }
    if mantissa_digits + shift > i64::from(precision.min(38)) {
        return Err(format!(
            "`{text}` does not fit decimal({precision},{scale}): at most {} digits before the point",
            precision.saturating_sub(scale)
        ));
    }
    let unscaled = mantissa * 10i128.pow(shift as u32);
    Ok(if negative { -unscaled } else { unscaled })
}

/// The smallest unscaled magnitude that does not fit `precision` digits (10^precision).
pub(super) fn decimal_bound(precision: u32) -> i128 {
    10i128.saturating_pow(precision.min(38))
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, NaiveDate};

    use super::*;

    #[test]
    fn calendar_matches_chrono_across_its_range() {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let min = NaiveDate::MIN.signed_duration_since(epoch).num_days();
        let max = NaiveDate::MAX.signed_duration_since(epoch).num_days();
        let mut day = min;
        while day <= max {
            let date = epoch + chrono::Duration::days(day);
            let (y, m, d) = civil_from_days(day);
            assert_eq!(
                (y, m, d),
                (i64::from(date.year()), date.month(), date.day())
            );
            assert_eq!(days_from_civil(y, m, d), day);
            day += 997; // a prime stride visits every month and leap-year case
        }
        for day in [
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            -719_529,
            0,
            59,
            60,
        ] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn parses_dates_strictly() {
        assert_eq!(parse_date("1970-01-01"), Ok(0));
        assert_eq!(parse_date("2000-02-29"), Ok(11_016));
        assert_eq!(parse_date("+10000-01-01"), Ok(2_932_897));
        assert_eq!(parse_date("-0001-12-31"), Ok(-719_529));
        assert_eq!(parse_date("-5877641-06-23"), Ok(i32::MIN));
        assert_eq!(parse_date("+5881580-07-11"), Ok(i32::MAX));
        for bad in [
            "",
            "1970-1-01",
            "1970-01-32",
            "1900-02-29",
            "1970-00-10",
            "19700-01-01",
            "1970-01-01T00:00:00",
            "+5881580-07-12",
            " 1970-01-01",
            "1970/01/01",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_timestamps() {
        let ts = |s| parse_timestamp(s, false);
        let tz = |s| parse_timestamp(s, true);
        assert_eq!(ts("1970-01-01T00:00:00.000001"), Ok(1));
        assert_eq!(ts("1969-12-31T23:59:59.999999"), Ok(-1));
        assert_eq!(ts("1970-01-01 00:00:01"), Ok(1_000_000));
        assert_eq!(ts("1970-01-01T00:00:00.5"), Ok(500_000));
        assert_eq!(ts("1970-01-01T00:00:00.123456000"), Ok(123_456));
        assert!(ts("1970-01-01T00:00:00.1234567").is_err());
        assert!(ts("1970-01-01T00:00:00Z").is_err());
        assert!(ts("1970-01-01T24:00:00").is_err());
        assert!(ts("1970-01-01T00:00").is_err());
        assert_eq!(tz("1970-01-01T00:00:00.000001Z"), Ok(1));
        assert_eq!(tz("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(tz("1969-12-31T23:30:00-0030"), Ok(0));
        assert!(tz("1970-01-01T00:00:00").is_err());
        assert!(tz("1970-01-01T00:00:00Zx").is_err());
        assert_eq!(
            ts("-290308-12-21T19:59:05.224192"),
            Ok(i64::MIN),
            "the smallest i64"
        );
        assert!(ts("-290308-12-21T19:59:05.224191").is_err());
        assert_eq!(ts("+294247-01-10T04:00:54.775807"), Ok(i64::MAX));
        assert!(ts("+294247-01-10T04:00:54.775808").is_err());
    }

    #[test]
    fn parses_decimals_exactly() {
        let d = parse_decimal;
        assert_eq!(d("12.30", 12, 2), Ok(1230));
        assert_eq!(d("12.3", 12, 2), Ok(1230));
        assert_eq!(d("12", 12, 2), Ok(1200));
        assert_eq!(d("-0.05", 12, 2), Ok(-5));
        assert_eq!(d("12.300", 12, 2), Ok(1230));
        assert_eq!(d("1.5E+3", 12, 2), Ok(150_000));
        assert_eq!(d("1234e-2", 12, 2), Ok(1234));
        assert_eq!(d(".5", 3, 1), Ok(5));
        assert_eq!(d("-0", 3, 1), Ok(0));
        assert_eq!(d("0e999999999", 3, 1), Ok(0));
        let nines = "9".repeat(38);
        assert_eq!(d(&nines, 38, 0), Ok(10i128.pow(38) - 1));
        let fraction = format!("-0.{nines}");
        assert_eq!(d(&fraction, 38, 38), Ok(-(10i128.pow(38) - 1)));
        assert!(d("12.301", 12, 2).unwrap_err().contains("fraction digits"));
        assert!(d("1000", 5, 2).unwrap_err().contains("does not fit"));
        assert!(d("1e40", 38, 0).is_err());
        for bad in [
            "", "-", ".", "1.2.3", "1e", "1e+", "abc", "1,5", " 1", "0x10", "--1",
        ] {
            assert!(d(bad, 10, 2).is_err(), "{bad}");
        }
    }
}
