//! Markdown, as this project writes its references, to a man page: the Lua
//! reference (docs/lua.md) becomes vmig-lua(7). Headings, paragraphs, lists,
//! code blocks and tables; inline code in bold.

/// `markdown` as a roff man page `name(section)`.
pub fn man_page(name: &str, section: u8, markdown: &str) -> String {
    let mut out = String::new();
    let mut lines = markdown.lines().peekable();
    let mut title = String::new();
    if let Some(first) = lines.peek()
        && let Some(text) = first.strip_prefix("# ")
    {
        title = text.to_string();
        lines.next();
    }
    out.push_str(&format!(".TH {} {section}\n", name.to_uppercase()));
    out.push_str(&format!(".SH NAME\n{} \\- {}\n", escape(name), escape(&title)));
    let mut in_code = false;
    let mut in_paragraph = false;
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            if in_code {
                out.push_str(".fi\n.RE\n");
            } else {
                out.push_str(".PP\n.RS 4\n.nf\n");
            }
            in_code = !in_code;
            in_paragraph = false;
            continue;
        }
        if in_code {
            out.push_str(&escape_code(line));
            out.push('\n');
            continue;
        }
        if let Some(code) = line.strip_prefix("    ") {
            out.push_str(".PP\n.RS 4\n.nf\n");
            out.push_str(&escape_code(code));
            out.push('\n');
            while let Some(next) = lines.peek().and_then(|l| l.strip_prefix("    ")) {
                out.push_str(&escape_code(next));
                out.push('\n');
                lines.next();
            }
            out.push_str(".fi\n.RE\n");
            in_paragraph = false;
            continue;
        }
        if let Some(text) = line.strip_prefix("## ") {
            out.push_str(&format!(".SH {}\n", escape(&text.to_uppercase())));
            in_paragraph = false;
        } else if let Some(text) = line.strip_prefix("### ") {
            out.push_str(&format!(".SS {}\n", inline(text)));
            in_paragraph = false;
        } else if line.starts_with('|') {
            // A table: its rows as lines, the separator row left out.
            if !line.contains("---") {
                let cells: Vec<String> = line
                    .trim_matches('|')
                    .split('|')
                    .map(|c| inline(c.trim()))
                    .filter(|c| !c.is_empty())
                    .collect();
                out.push_str(&format!(".TP\n{}\n{}\n", cells[0], cells[1..].join(" \\(em ")));
            }
            in_paragraph = false;
        } else if let Some(text) = line.strip_prefix("- ") {
            out.push_str(&format!(".IP \\(bu 2\n{}\n", inline(text)));
            in_paragraph = true;
        } else if line.trim().is_empty() {
            in_paragraph = false;
        } else {
            if !in_paragraph {
                out.push_str(".PP\n");
                in_paragraph = true;
            }
            out.push_str(&inline(line.trim_start()));
            out.push('\n');
        }
    }
    out
}

/// Text with `code` in bold, escaped for roff.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("\\fB{}\\fR", escape(part)));
        } else {
            out.push_str(&escape(part).replace("**", ""));
        }
    }
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

fn escape_code(line: &str) -> String {
    let line = escape(line);
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_code_and_tables_become_roff() {
        let page = man_page(
            "vmig-lua",
            7,
            "# vmig Lua runbooks\n\n## Running\n\nRun `vmig run`.\n\n```lua\n.x = 1\n```\n\n| a | b |\n|---|---|\n| `c` | d |\n",
        );
        assert!(page.starts_with(".TH VMIG-LUA 7\n.SH NAME\nvmig\\-lua \\- vmig Lua runbooks\n"));
        assert!(page.contains(".SH RUNNING\n.PP\nRun \\fBvmig run\\fR.\n"), "{page}");
        assert!(page.contains(".nf\n\\&.x = 1\n.fi\n"), "{page}");
        assert!(page.contains(".TP\n\\fBc\\fR\nd\n"), "{page}");
        assert!(!page.contains("---"));
    }
}
