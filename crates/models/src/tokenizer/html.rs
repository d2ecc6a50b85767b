//! HTML character references, decoded the two ways the reference prompt cleaning does:
//! [`unescape`] as Python's `html.unescape` (HTML5 rules: named references with or without `;`,
//! longest-prefix matching, numeric references with the HTML5 replacements), and
//! [`unescape_strict`] as ftfy's `unescape_html` (only complete `&...;` references, plus
//! uppercased names such as `&NTILDE;`).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::entities::{LEGACY_NAMES, TWO_CODE_POINT_ENTITIES};

/// Named references as Python keys them: `"amp;"` for every name, plus `"amp"` for legacy names.
fn html5_entities() -> &'static HashMap<String, String> {
    static TABLE: OnceLock<HashMap<String, String>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table: HashMap<String, String> = html_escape::NAMED_ENTITIES
            .iter()
            .map(|(name, value)| {
                (
                    format!("{};", String::from_utf8_lossy(name)),
                    value.to_string(),
                )
            })
            .collect();
        for (name, value) in TWO_CODE_POINT_ENTITIES {
            table.insert(format!("{name};"), value.to_string());
        }
        for name in LEGACY_NAMES {
            let value = table[&format!("{name};")].clone();
            table.insert(name.to_string(), value);
        }
        table
    })
}

/// Windows-1252 meanings of the bytes 0x80..=0x9F; the five it leaves undefined map to themselves
/// (Python's `_invalid_charrefs`, and ftfy's "sloppy" Windows-1252).
pub(crate) fn windows_1252_c1(byte: u32) -> char {
    const TABLE: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x192, 0x201E, 0x2026, 0x2020, 0x2021, 0x2C6, 0x2030, 0x160, 0x2039,
        0x152, 0x8D, 0x17D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
        0x2DC, 0x2122, 0x161, 0x203A, 0x153, 0x9D, 0x17E, 0x178,
    ];
    char::from_u32(TABLE[(byte - 0x80) as usize]).unwrap_or('\u{FFFD}')
}

/// What a numeric reference `&#num;` decodes to under HTML5 (Python's `_replace_charref`).
fn numeric_reference(num: u32) -> String {
    match num {
        0x00 => "\u{FFFD}".into(),
        0x0D => "\r".into(),
        0x80..=0x9F => windows_1252_c1(num).to_string(),
        0xD800..=0xDFFF => "\u{FFFD}".into(),
        n if n > 0x10FFFF => "\u{FFFD}".into(),
        0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => String::new(),
        n if n & 0xFFFE == 0xFFFE => String::new(),
        n => char::from_u32(n).map(String::from).unwrap_or_default(),
    }
}

/// Parses a run of digits; values too large for u32 become u32::MAX (decoded as U+FFFD).
fn parse_number(digits: &str, radix: u32) -> u32 {
    u32::from_str_radix(digits, radix).unwrap_or(u32::MAX)
}

/// Length of the leading run of `rest` whose bytes satisfy `pred`.
fn run_len(rest: &str, pred: impl Fn(u8) -> bool) -> usize {
    rest.bytes().take_while(|b| pred(*b)).count()
}

/// Decodes the reference that starts right after an `&` in `rest`, as Python's `html.unescape`.
/// Returns the replacement and how many bytes of `rest` it consumed, or None if no reference
/// starts here.
fn python_reference(rest: &str) -> Option<(String, usize)> {
    let bytes = rest.as_bytes();
    if bytes.first() == Some(&b'#') {
        let (radix, start) = match bytes.get(1) {
            Some(b'x' | b'X') => (16, 2),
            _ => (10, 1),
        };
        let digits = if radix == 16 {
            run_len(&rest[start..], |b| b.is_ascii_hexdigit())
        } else {
            run_len(&rest[start..], |b| b.is_ascii_digit())
        };
        if digits == 0 {
            return None;
        }
        let end = start + digits;
        let consumed = end + usize::from(bytes.get(end) == Some(&b';'));
        return Some((
            numeric_reference(parse_number(&rest[start..end], radix)),
            consumed,
        ));
    }
    // A name: 1..=32 characters other than \t \n \f space < & # ;, then an optional ';'.
    let name_end = rest
        .char_indices()
        .take(32)
        .find(|(_, c)| matches!(c, '\t' | '\n' | '\x0C' | ' ' | '<' | '&' | '#' | ';'))
        .map(|(i, _)| i)
        .unwrap_or_else(|| rest.char_indices().nth(32).map_or(rest.len(), |(i, _)| i));
    if name_end == 0 {
        return None;
    }
    let consumed = name_end + usize::from(bytes.get(name_end) == Some(&b';'));
    let candidate = &rest[..consumed];
    let table = html5_entities();
    if let Some(value) = table.get(candidate) {
        return Some((value.clone(), consumed));
    }
    // Longest prefix of at least two characters that is a name (legacy names need no ';').
    let boundaries: Vec<usize> = candidate.char_indices().map(|(i, _)| i).skip(2).collect();
    for &cut in boundaries.iter().rev() {
        if let Some(value) = table.get(&candidate[..cut]) {
            return Some((format!("{value}{}", &candidate[cut..]), consumed));
        }
    }
    Some((format!("&{candidate}"), consumed))
}

/// Python's `html.unescape`.
pub fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(offset) = text[pos..].find('&') {
        let amp = pos + offset;
        out.push_str(&text[pos..amp]);
        match python_reference(&text[amp + 1..]) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                pos = amp + 1 + consumed;
            }
            None => {
                out.push('&');
                pos = amp + 1;
            }
        }
    }
    out.push_str(&text[pos..]);
    out
}

/// ftfy's table: every `&name;` reference, plus `&NAME;` for lowercase names whose uppercase
/// spelling would not otherwise decode (decoded to the uppercased character).
fn ftfy_entities() -> &'static HashMap<String, String> {
    static TABLE: OnceLock<HashMap<String, String>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        for (name, value) in html5_entities() {
            if !name.ends_with(';') {
                continue;
            }
            let reference = format!("&{name}");
            table.insert(reference, value.clone());
            if name.to_lowercase() == *name {
                let upper = format!("&{}", name.to_uppercase());
                if unescape(&upper) == upper {
                    table.insert(upper, value.to_uppercase());
                }
            }
        }
        table
    })
}

/// ftfy's `unescape_html`: replaces complete references `&#?[0-9A-Za-z]{1,24};` only.
pub fn unescape_strict(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(offset) = text[pos..].find('&') {
        let amp = pos + offset;
        out.push_str(&text[pos..amp]);
        let rest = &text[amp + 1..];
        let hash = usize::from(rest.starts_with('#'));
        let name_len = run_len(&rest[hash..], |b| b.is_ascii_alphanumeric());
        let end = hash + name_len;
        if (1..=24).contains(&name_len) && rest.as_bytes().get(end) == Some(&b';') {
            let reference = &text[amp..amp + 1 + end + 1];
            let replacement = match ftfy_entities().get(reference) {
                Some(value) => value.clone(),
                None if hash == 1 => {
                    // Numeric: accept html.unescape's answer only if it consumed the ';'.
                    let decoded = unescape(reference);
                    if decoded.contains(';') {
                        reference.to_string()
                    } else {
                        decoded
                    }
                }
                None => reference.to_string(),
            };
            out.push_str(&replacement);
            pos = amp + 1 + end + 1;
        } else {
            out.push('&');
            pos = amp + 1;
        }
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_unescape_cases() {
        // Expected values are what CPython's html.unescape returns.
        let cases = [
            ("&amp;", "&"),
            ("&amp", "&"),
            ("&ampx", "&x"),
            ("&notit;", "¬it;"),
            ("&notin;", "∉"),
            ("&acE;", "\u{223E}\u{0333}"),
            ("&#0;", "\u{FFFD}"),
            ("&#128;", "€"),
            ("&#x110000;", "\u{FFFD}"),
            ("&#99999999999999999999;", "\u{FFFD}"),
            ("&#1;", ""),
            ("&#65", "A"),
            ("&#x;", "&#x;"),
            ("&;", "&;"),
            ("& amp;", "& amp;"),
            ("&bogus;", "&bogus;"),
            ("a&&amp;b", "a&&b"),
        ];
        for (input, expected) in cases {
            assert_eq!(unescape(input), expected, "unescape({input:?})");
        }
    }

    #[test]
    fn strict_unescape_needs_the_semicolon() {
        assert_eq!(unescape_strict("&amp &amp; &NTILDE; &AMP;"), "&amp & Ñ &");
        assert_eq!(unescape_strict("&#65; &#x41; &#xZZ;"), "A A &#xZZ;");
        assert_eq!(
            unescape_strict("&aaaaaaaaaaaaaaaaaaaaaaaaa;"),
            "&aaaaaaaaaaaaaaaaaaaaaaaaa;"
        );
    }
}
