//! Tiny string builders used instead of `format!`: `core::fmt` costs several kilobytes of wasm
//! (the formatting machinery, padding and per-type `Display` code), and these cover every
//! message and id the client builds.

use alloc::string::String;

/// `DIGITS[d]` is the digit `d` (hex digits for 10-15) as a `&str`: pushed with `push_str`, so
/// the module needs no `String::push(char)` (its UTF-8 encoding), and indexed only by values the
/// compiler can see are in range (`% 10`, `& 0xf`), so no bounds check can panic.
const DIGITS: [&str; 16] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f",
];

/// Appends `n` in decimal.
pub fn push_dec(out: &mut String, n: u64) {
    if n >= 10 {
        // At most 19 levels deep: u64::MAX has 20 digits.
        push_dec(out, n / 10);
    }
    out.push_str(DIGITS[(n % 10) as usize]);
}

/// Appends `n` as 16 lowercase hex digits (zero-padded, like `{:016x}`).
pub fn push_hex16(out: &mut String, n: u64) {
    for shift in (0..16).rev() {
        out.push_str(DIGITS[((n >> (shift * 4)) & 0xf) as usize]);
    }
}

/// The pieces joined into one string.
pub fn concat(parts: &[&str]) -> String {
    let mut s = String::new();
    for p in parts {
        s.push_str(p);
    }
    s
}

/// `n` in decimal.
pub fn dec(n: u64) -> String {
    let mut s = String::new();
    push_dec(&mut s, n);
    s
}

/// The length in bytes of `s` encoded as a JSON string, quotes included, as both `JSON.stringify`
/// and serde_json write it: `"` and `\\` and the short control escapes take two bytes, other
/// control characters six (`\u00XX`), everything else stays as it is (UTF-8).
pub fn json_str_len(s: &str) -> usize {
    let mut len = s.len() + 2;
    for b in s.bytes() {
        len += match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        };
    }
    len
}

/// Appends `s` as a JSON string (quotes included), escaped as [`json_str_len`] counts.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                for d in [(c as u32) >> 4, (c as u32) & 0xf] {
                    out.push(char::from_digit(d, 16).unwrap_or('0'));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A decimal `u64` as `str::parse::<u64>` reads it (optional `+`, digits only, no overflow).
pub fn parse_dec(s: &str) -> Option<u64> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

// Native only: the checks compare with the JSON codec, a native dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn matches_format() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(dec(n), format!("{n}"));
            let mut h = String::new();
            push_hex16(&mut h, n);
            assert_eq!(h, format!("{n:016x}"));
        }
        assert_eq!(concat(&["a", "", "bc"]), "abc");
        for s in ["", "plain", "q\"b\\s\n\r\t\u{8}\u{c}\u{1}\u{1f} é ✓ \u{7f}"] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap());
            assert_eq!(json_str_len(s), out.len());
        }
        for s in [
            "0",
            "+7",
            "120",
            "",
            "+",
            "-1",
            "1a",
            " 1",
            "18446744073709551615",
            "18446744073709551616",
        ] {
            assert_eq!(parse_dec(s), s.parse::<u64>().ok(), "{s:?}");
        }
    }
}
