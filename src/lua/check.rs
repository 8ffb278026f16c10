//! A runbook's names of the module, checked before it runs: `vmig.migarte`
//! is refused with its line before anything is changed, not half way
//! through a maintenance window. The scan skips comments and strings; a
//! name reached another way (`local v = vmig; v.x()`) is still caught when
//! it runs (the module's table has no such field).

/// The first use of `vmig.NAME` (or `vmig.log.NAME`) that the module does
/// not have: its line (from 1) and the name as written.
pub fn unknown_name(source: &str, known: &[&str]) -> Option<(usize, String)> {
    let tokens = tokens(source);
    let mut i = 0;
    while i + 2 < tokens.len() {
        if tokens[i].text == "vmig" && tokens[i + 1].text == "." && is_name(tokens[i + 2].text) {
            // `x.vmig.y` is some other table's field.
            let qualified = i > 0 && matches!(tokens[i - 1].text, "." | ":");
            let mut name = tokens[i + 2].text.to_string();
            if name == "log" && i + 4 < tokens.len() && tokens[i + 3].text == "." && is_name(tokens[i + 4].text) {
                name = format!("log.{}", tokens[i + 4].text);
            }
            if !qualified && !known.contains(&name.as_str()) {
                return Some((tokens[i].line, name));
            }
        }
        i += 1;
    }
    None
}

#[derive(Debug)]
struct Token<'a> {
    text: &'a str,
    line: usize,
}

fn is_name(text: &str) -> bool {
    text.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

/// Names and single punctuation characters, with their lines; comments,
/// strings and numbers are left out.
fn tokens(source: &str) -> Vec<Token<'_>> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i += 2;
                if let Some(end) = long_bracket(bytes, i) {
                    line += count_lines(&bytes[i..end]);
                    i = end;
                } else {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
            }
            b'[' if long_bracket(bytes, i).is_some() => {
                let end = long_bracket(bytes, i).unwrap_or(bytes.len());
                line += count_lines(&bytes[i..end]);
                i = end;
            }
            b'"' | b'\'' => {
                i += 1;
                while i < bytes.len() && bytes[i] != c && bytes[i] != b'\n' {
                    if bytes[i] == b'\\' {
                        if bytes.get(i + 1) == Some(&b'\n') {
                            line += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                tokens.push(Token {
                    text: &source[start..i],
                    line,
                });
            }
            c if c.is_ascii_digit() => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                // One byte of punctuation (".." is two "." tokens; harmless).
                let len = source[i..].chars().next().map_or(1, char::len_utf8);
                tokens.push(Token {
                    text: &source[i..i + len],
                    line,
                });
                i += len;
            }
        }
    }
    tokens
}

/// Where a long bracket (`[[`, `[==[`) opening at `at` closes, just after.
fn long_bracket(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes.get(at) != Some(&b'[') {
        return None;
    }
    let mut level = 0;
    while bytes.get(at + 1 + level) == Some(&b'=') {
        level += 1;
    }
    if bytes.get(at + 1 + level) != Some(&b'[') {
        return None;
    }
    let close: Vec<u8> = std::iter::once(b']')
        .chain(std::iter::repeat_n(b'=', level))
        .chain(std::iter::once(b']'))
        .collect();
    let body = at + 2 + level;
    let end = bytes[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map_or(bytes.len(), |p| body + p + close.len());
    Some(end)
}

fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["migrate", "vms", "log.info"];

    #[test]
    fn a_misspelt_function_is_found_with_its_line() {
        let source = "local x = 1\n\nvmig.migarte('vm1', 'hostB')\n";
        assert_eq!(unknown_name(source, KNOWN), Some((3, "migarte".to_string())));
        assert_eq!(unknown_name("vmig.log.inf('x')", KNOWN), Some((1, "log.inf".into())));
    }

    #[test]
    fn comments_strings_and_other_tables_are_not_uses() {
        let source = r#"
-- vmig.nothing()
--[[ vmig.nothing()
]]
local s = "vmig.nothing" .. 'vmig.nothing' .. [==[ vmig.nothing ]==]
local t = {vmig = {}}; local _ = t.vmig.nothing
vmig.migrate("vm1", "hostB")
vmig.log.info("x")
for _, vm in ipairs(vmig.vms()) do end
"#;
        assert_eq!(unknown_name(source, KNOWN), None);
    }

    #[test]
    fn lines_count_through_long_strings() {
        let source = "local s = [[\n\n]]\nvmig.nope()";
        assert_eq!(unknown_name(source, KNOWN), Some((4, "nope".into())));
    }
}
