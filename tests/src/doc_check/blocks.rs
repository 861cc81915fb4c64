//! Markdown read as the docs check needs it: fenced code blocks with their info string and
//! line, and the rows of hash test vector tables. Pure text handling, no I/O.

use std::path::{Path, PathBuf};

/// A fenced code block: ```` ```yaml rollout-spec ````, its body, where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub file: PathBuf,
    /// 1-based line of the opening fence.
    pub line: usize,
    /// The info string's first word (`yaml`, `sh`, …), lowercase; empty for none.
    pub lang: String,
    /// The info string's other words (`rollout-spec`, `no-check`, …).
    pub tags: Vec<String>,
    /// The lines between the fences, with the fence's indentation taken off.
    pub body: String,
}

impl Block {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// `file:line` of the block's `offset`-th body line (0-based).
    pub fn at(&self, offset: usize) -> String {
        format!("{}:{}", self.file.display(), self.line + 1 + offset)
    }

    /// `file:line` of the opening fence.
    pub fn here(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// Every fenced block of `text` (read from `file`). A fence is three or more backticks or
/// tildes, indented (e.g. inside a list item) or not; it closes at a line of the same
/// character, at least as long, and nothing else. An unclosed block runs to the end.
pub fn fenced_blocks(file: &Path, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some((indent, fence, info)) = opening_fence(line) else {
            continue;
        };
        let mut words = info.split_whitespace().map(str::to_string);
        let lang = words.next().unwrap_or_default().to_ascii_lowercase();
        let tags = words.collect();
        let mut body = String::new();
        for (_, inner) in lines.by_ref() {
            let trimmed = inner.trim();
            if trimmed.len() >= fence.len() && trimmed.chars().all(|c| fence.starts_with(c)) {
                break;
            }
            body.push_str(strip_indent(inner, indent));
            body.push('\n');
        }
        blocks.push(Block {
            file: file.to_path_buf(),
            line: i + 1,
            lang,
            tags,
            body,
        });
    }
    blocks
}

/// `(indent, fence, info string)` if `line` opens a fenced block.
fn opening_fence(line: &str) -> Option<(usize, &str, &str)> {
    let rest = line.trim_start();
    let indent = line.len() - rest.len();
    let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = rest.chars().take_while(|c| *c == ch).count();
    if len < 3 {
        return None;
    }
    let (fence, info) = rest.split_at(len);
    // A backtick fence's info string has no backtick (that is inline code).
    if ch == '`' && info.contains('`') {
        return None;
    }
    Some((indent, fence, info.trim()))
}

/// `line` without up to `indent` leading spaces.
fn strip_indent(line: &str, indent: usize) -> &str {
    let spaces = line.len() - line.trim_start_matches(' ').len();
    &line[spaces.min(indent)..]
}

/// The comment that opens a table of hash test vectors.
pub const HASH_VECTORS_MARK: &str = "<!-- hash-vectors -->";

/// One row of a hash vector table: `| salt | key | weight_bp | bucket | version |`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorRow {
    pub file: PathBuf,
    pub line: usize,
    /// The row's cells, trimmed, outer backticks kept (see [`cell_text`]).
    pub cells: Vec<String>,
}

impl VectorRow {
    pub fn here(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// The data rows of every hash vector table: the table rows after a [`HASH_VECTORS_MARK`]
/// line until the next blank line, less the header row and the `---` row.
pub fn vector_rows(file: &Path, text: &str) -> Vec<VectorRow> {
    let mut rows = Vec::new();
    let mut in_table = false;
    let mut seen_header = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed == HASH_VECTORS_MARK {
            (in_table, seen_header) = (true, false);
            continue;
        }
        if !in_table {
            continue;
        }
        if trimmed.is_empty() {
            in_table = false;
            continue;
        }
        let Some(inner) = trimmed.strip_prefix('|') else {
            continue;
        };
        let inner = inner.strip_suffix('|').unwrap_or(inner);
        let cells: Vec<String> = inner.split('|').map(|c| c.trim().to_string()).collect();
        let separator = cells
            .iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')));
        if separator {
            continue;
        }
        if !seen_header {
            seen_header = true;
            continue;
        }
        rows.push(VectorRow {
            file: file.to_path_buf(),
            line: i + 1,
            cells,
        });
    }
    rows
}

/// A salt or key cell as a string: the text inside backticks as written; a cell that is
/// empty or reads `(empty)` (outside backticks) is the empty string.
pub fn cell_text(cell: &str) -> String {
    if let Some(inner) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
        if !inner.is_empty() {
            return inner.to_string();
        }
    }
    match cell {
        "" | "(empty)" | "``" => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_their_language_tags_body_and_line() {
        let text = "# Title\n\n```yaml rollout-spec\nname: a\n```\n\n- item\n\n  ```sh\n  make test\n  ```\n````\nraw ``` inside\n````\n";
        let blocks = fenced_blocks(Path::new("x.md"), text);
        assert_eq!(blocks.len(), 3, "{blocks:?}");
        assert_eq!(
            (blocks[0].line, blocks[0].lang.as_str()),
            (3, "yaml"),
            "{blocks:?}"
        );
        assert_eq!(blocks[0].tags, ["rollout-spec"]);
        assert_eq!(blocks[0].body, "name: a\n");
        assert_eq!(blocks[1].line, 9);
        assert_eq!(
            blocks[1].body, "make test\n",
            "the list item's indent is removed"
        );
        assert_eq!(blocks[1].at(0), "x.md:10");
        assert_eq!(blocks[2].lang, "");
        assert_eq!(
            blocks[2].body, "raw ``` inside\n",
            "a shorter fence does not close"
        );
    }

    #[test]
    fn inline_code_is_not_a_fence() {
        assert!(fenced_blocks(Path::new("x"), "```not a fence```\n").is_empty());
    }

    #[test]
    fn vector_rows_skip_the_header_and_separator_and_end_at_a_blank_line() {
        let text = "<!-- hash-vectors -->\n| salt | key | weight_bp | bucket | version |\n|---|:--|--:|---|---|\n| `s` | `` | 1000 | 6294 | stable |\n| `a` | `b` | 1 | 2 | canary |\n\n| `x` | `y` | 1 | 2 | canary |\n";
        let rows = vector_rows(Path::new("d.md"), text);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].line, 4);
        assert_eq!(rows[0].cells, ["`s`", "``", "1000", "6294", "stable"]);
        assert_eq!(cell_text(&rows[0].cells[1]), "");
        assert_eq!(cell_text("`été`"), "été");
        assert_eq!(cell_text("(empty)"), "");
        assert_eq!(cell_text("`(empty)`"), "(empty)");
    }
}
