//! Prompt cleaning as Wan2.1 and diffusers do it before tokenizing:
//! `whitespace_clean(basic_clean(text))`, where basic_clean is ftfy's `fix_text`, then
//! `html.unescape` twice, then strip, and whitespace_clean collapses whitespace runs to one space.
//!
//! [`fix_text`] reproduces ftfy 6's `fix_text` with its default settings except for one step:
//! mojibake repair (`fix_encoding`: re-decoding text such as "cafÃ©" that was UTF-8 read as
//! Latin-1) is not implemented, so such text passes through unrepaired.

use tokenizers::NormalizedString;

use super::html;

/// Cleans a prompt exactly as the reference pipelines do (see the module docs for the one ftfy
/// step left out).
pub fn clean_prompt(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html::unescape(&html::unescape(&fixed));
    collapse_whitespace(unescaped.trim_matches(is_python_space))
}

/// Python's `str.isspace` (what `strip()` removes): Unicode White_Space plus U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c)
}

/// `re.sub(r"\s+", " ", text).strip()` with the `regex` module, whose `\s` is Unicode White_Space.
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            in_space = true;
        } else {
            if in_space && !out.is_empty() {
                out.push(' ');
            }
            in_space = false;
            out.push(c);
        }
    }
    out.trim_matches(is_python_space).to_string()
}

/// ftfy's `fix_text`: the text is fixed line by line; HTML references are decoded only until a
/// line containing '<' is met (it may be markup, where entities are meant literally).
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape_html = true;
    for segment in text.split_inclusive('\n') {
        if unescape_html && segment.contains('<') {
            unescape_html = false;
        }
        out.push_str(&fix_segment(segment, unescape_html));
    }
    out
}

/// ftfy's `fix_and_explain`: applies the fixers in order until the text stops changing.
fn fix_segment(segment: &str, unescape_html: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let before = text.clone();
        if unescape_html {
            text = html::unescape_strict(&text);
        }
        // (fix_encoding, mojibake repair, would run here; not implemented.)
        let mut fixed = String::with_capacity(text.len());
        for c in text.chars() {
            push_fixed_char(c, &mut fixed);
        }
        text = fix_line_breaks(&fixed);
        text = remove_terminal_escapes(&text);
        text = text.chars().filter(|c| !is_removed_control(*c)).collect();
        let mut normalized = NormalizedString::from(text.as_str());
        normalized.nfc();
        text = normalized.get().to_string();
        if text == before {
            return text;
        }
    }
}

/// The per-character fixers, in ftfy's order: C1 controls as Windows-1252, Latin ligatures,
/// halfwidth/fullwidth forms, curly quotes. Each is a context-free map of single characters, so
/// feeding each one's output to the later ones, character by character, equals running them
/// over the whole text one after another.
fn push_fixed_char(c: char, out: &mut String) {
    let code = c as u32;
    // fix_c1_controls
    let c = if (0x80..=0x9F).contains(&code) {
        html::windows_1252_c1(code)
    } else {
        c
    };
    // fix_latin_ligatures
    let ligature = match c {
        'Ĳ' => Some("IJ"),
        'ĳ' => Some("ij"),
        'ŉ' => Some("ʼn"),
        'Ǳ' => Some("DZ"),
        'ǲ' => Some("Dz"),
        'ǳ' => Some("dz"),
        'Ǆ' => Some("DŽ"),
        'ǅ' => Some("Dž"),
        'ǆ' => Some("dž"),
        'Ǉ' => Some("LJ"),
        'ǈ' => Some("Lj"),
        'ǉ' => Some("lj"),
        'Ǌ' => Some("NJ"),
        'ǋ' => Some("Nj"),
        'ǌ' => Some("nj"),
        'ﬀ' => Some("ff"),
        'ﬁ' => Some("fi"),
        'ﬂ' => Some("fl"),
        'ﬃ' => Some("ffi"),
        'ﬄ' => Some("ffl"),
        'ﬅ' => Some("ſt"),
        'ﬆ' => Some("st"),
        _ => None,
    };
    if let Some(letters) = ligature {
        // ftfy's ligature expansions contain ʼ (U+02BC), which uncurl_quotes turns into '.
        out.extend(letters.chars().map(uncurl_quote));
        return;
    }
    // fix_character_width: U+3000 and the U+FF01..U+FFEF forms become their NFKC equivalents.
    let code = c as u32;
    if code == 0x3000 {
        out.push(' ');
        return;
    }
    if (0xFF01..=0xFFEF).contains(&code) {
        let mut normalized = NormalizedString::from(c.to_string().as_str());
        normalized.nfkc();
        out.extend(normalized.get().chars().map(uncurl_quote));
        return;
    }
    out.push(uncurl_quote(c));
}

/// ftfy's `uncurl_quotes`: U+02BC and U+2018..U+201B → ', U+201C..U+201F → ".
fn uncurl_quote(c: char) -> char {
    match c {
        '\u{02BC}' | '\u{2018}'..='\u{201B}' => '\'',
        '\u{201C}'..='\u{201F}' => '"',
        other => other,
    }
}

/// ftfy's `fix_line_breaks`: CRLF, CR, U+2028, U+2029 and U+0085 become "\n".
fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// ftfy's `remove_terminal_escapes`: ANSI sequences `ESC [ (digits|;)* letter`.
fn remove_terminal_escapes(text: &str) -> String {
    if !text.contains('\u{1B}') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("\u{1B}[") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        // ftfy's pattern uses \d, which in Python also takes non-ASCII decimal digits; terminal
        // escapes only ever use ASCII ones.
        let params = after
            .bytes()
            .take_while(|b| *b == b';' || b.is_ascii_digit())
            .count();
        match after[params..].chars().next() {
            Some(c) if c.is_ascii_alphabetic() => rest = &after[params + 1..],
            _ => {
                out.push('\u{1B}');
                rest = &rest[start + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// ftfy's `remove_control_chars`: C0 controls except \t \n \x0C \r, DEL, deprecated Arabic
/// format controls, the BOM, interlinear annotation marks and U+FFFC.
fn is_removed_control(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_collapsed_and_trimmed() {
        assert_eq!(clean_prompt("  a \t b\n\nc\u{3000}d\u{A0} "), "a b c d");
        assert_eq!(clean_prompt(""), "");
        assert_eq!(clean_prompt(" \n\t "), "");
    }

    #[test]
    fn html_is_unescaped_three_times_without_markup() {
        // ftfy decodes until stable, then diffusers unescapes twice more.
        assert_eq!(clean_prompt("&amp;amp;amp;amp;lt;"), "<");
        // With '<' present ftfy leaves entities alone; the two html.unescape passes still run.
        assert_eq!(clean_prompt("<b>&amp;amp;amp;</b>"), "<b>&amp;</b>");
    }

    #[test]
    fn terminal_escapes_and_controls_are_removed() {
        assert_eq!(clean_prompt("\u{1B}[1;31mred\u{1B}[0m\u{7}!"), "red!");
        assert_eq!(clean_prompt("\u{1B}[x"), "");
        // An unfinished escape loses only the ESC (a control character).
        assert_eq!(clean_prompt("\u{1B}[1;3"), "[1;3");
    }

    #[test]
    fn ligatures_widths_and_quotes_are_normalised() {
        assert_eq!(
            clean_prompt("\u{149} \u{FB06} \u{FF07}x\u{FF07} \u{FFE0}"),
            "'n st 'x' ¢"
        );
    }
}
