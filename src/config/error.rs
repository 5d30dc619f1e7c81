//! Configuration errors that name file, line, column and key.

use std::fmt;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// Dotted path of the offending key, e.g. `lists.allow[1]` (may be empty).
    pub key: String,
    pub message: String,
}

/// Why a configuration could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    /// The file was read but has errors; every one found is listed.
    #[error("{}", render(file, issues))]
    Invalid {
        file: String,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// The issues, when the file was read.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid { issues, .. } => issues,
            ConfigError::Io { .. } => &[],
        }
    }
}

fn render(file: &str, issues: &[ConfigIssue]) -> String {
    let mut out = String::new();
    for (i, issue) in issues.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{file}:{issue}"));
    }
    out
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "key `{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl ConfigIssue {
    /// An issue at a position, its key found from the file's text.
    pub(crate) fn at(text: &str, line: u64, column: u64, message: String) -> Self {
        ConfigIssue {
            line,
            column,
            key: key_path(text, line, column),
            message,
        }
    }

    /// An issue at a position with a known key.
    pub(crate) fn at_key(text: &str, line: u64, column: u64, key: String, message: String) -> Self {
        let _ = text;
        ConfigIssue {
            line,
            column,
            key,
            message,
        }
    }

    /// An issue on a key whose position is looked up later (see `locate`).
    pub(crate) fn keyed(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigIssue {
            line: 0,
            column: 0,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Fills in the position of a keyed issue from the text.
    pub(crate) fn locate(mut self, text: &str) -> Self {
        if self.line == 0
            && let Some((line, column)) = find_key(text, &self.key)
        {
            self.line = line;
            self.column = column;
        }
        self
    }

    /// An error from the YAML parser / serde.
    pub(crate) fn from_yaml_error(text: &str, e: &serde_saphyr::Error) -> Self {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let mut message = e.without_snippet().to_string();
        // The position is printed by us; drop the parser's own copy of it.
        if let Some(idx) = message.find(" at line ") {
            message.truncate(idx);
        }
        let message = message.trim().to_string();
        let mut key = if line > 0 {
            key_path(text, line, column)
        } else {
            String::new()
        };
        // An unknown field is reported at the field itself: name it exactly.
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some(end) = rest.find('`')
        {
            let name = &rest[..end];
            if !key.ends_with(name) {
                key = if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{key}.{name}")
                };
            }
        }
        ConfigIssue {
            line,
            column,
            key,
            message,
        }
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '-']).len()
}

/// The key a line declares (`  name: value` → `name`; `- name: v` → `name`).
fn declared_key(line: &str) -> Option<&str> {
    let t = line.trim_start_matches([' ', '-']);
    if t.starts_with('#') {
        return None;
    }
    let (k, _) = t.split_once(':')?;
    let k = k.trim().trim_matches(['"', '\'']);
    (!k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    .then_some(k)
}

/// True when a `key:` line holds no value of its own (what follows is nested under it):
/// only such a line can be the parent of a more indented one.
fn opens_block(line: &str) -> bool {
    line.split_once(':').is_some_and(|(_, v)| {
        let v = v.trim();
        v.is_empty() || v.starts_with('#') || v.starts_with('|') || v.starts_with('>')
    })
}

/// Dotted key path of the value at (line, column), from the indentation of the text.
fn key_path(text: &str, line: u64, column: u64) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(idx) = (line as usize).checked_sub(1).filter(|i| *i < lines.len()) else {
        return String::new();
    };
    let here = lines[idx];
    // Keys on the line itself, up to the column, following `{ ... }` nesting.
    let col = (column as usize).saturating_sub(1).min(here.len());
    let before = here.get(..col).unwrap_or(here);
    let mut stack: Vec<Option<String>> = vec![None];
    let mut word = String::new();
    for c in before.chars() {
        match c {
            '{' => {
                stack.push(None);
                word.clear();
            }
            '}' => {
                if stack.len() > 1 {
                    stack.pop();
                }
                word.clear();
            }
            ':' => {
                let k = word.trim().trim_matches(['"', '\'', '-', ' ']).to_string();
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    && let Some(top) = stack.last_mut()
                {
                    *top = Some(k);
                }
                word.clear();
            }
            ',' | '[' | ']' => word.clear(),
            _ => word.push(c),
        }
    }
    // The position may be the start of a key (an unknown field, a bad value reported at
    // its key): that key is the one named.
    let rest = here.get(col..).unwrap_or("");
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    if !name.is_empty()
        && rest[name.len()..].trim_start().starts_with(':')
        && let Some(top) = stack.last_mut()
    {
        *top = Some(name);
    }
    let mut parts: Vec<String> = stack.into_iter().flatten().collect();
    parts.reverse();
    let mut indent = indent_of(here);
    if parts.is_empty() {
        // A block-sequence item: its key is on a parent line.
        indent += 1;
    }
    for l in lines[..idx].iter().rev() {
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let ind = indent_of(l);
        if ind < indent
            && let Some(k) = declared_key(l)
            && opens_block(l)
        {
            parts.push(k.to_string());
            indent = ind;
            if ind == 0 {
                break;
            }
        }
    }
    parts.reverse();
    parts.dedup();
    parts.join(".")
}

/// Finds the line and column where a dotted key (indices ignored) is declared.
fn find_key(text: &str, key: &str) -> Option<(u64, u64)> {
    let segments: Vec<&str> = key
        .split('.')
        .map(|s| s.split('[').next().unwrap_or(s))
        .filter(|s| !s.is_empty())
        .collect();
    let mut found = None;
    let mut min_indent = 0usize;
    let mut start = 0usize;
    let lines: Vec<&str> = text.lines().collect();
    for seg in segments {
        let mut hit = None;
        for (i, l) in lines.iter().enumerate().skip(start) {
            let needle = format!("{seg}:");
            if let Some(pos) = l.find(&needle)
                && indent_of(l) >= min_indent
            {
                hit = Some((i, pos));
                break;
            }
        }
        let (i, pos) = hit?;
        found = Some(((i + 1) as u64, (pos + 1) as u64));
        min_indent = indent_of(lines[i]);
        start = i;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "listen: 1.2.3.4:1\nlists:\n  allow:\n    - 10.0.0.0/8\n    - bad\n  block: [1.2.3.4, junk]\nrules:\n  - { name: a, when: { score_above: 7 }, action: block }\n";

    #[test]
    fn key_paths_from_positions() {
        assert_eq!(key_path(DOC, 1, 9), "listen");
        assert_eq!(key_path(DOC, 5, 7), "lists.allow");
        assert_eq!(key_path(DOC, 6, 20), "lists.block");
        assert_eq!(key_path(DOC, 8, 37), "rules.when.score_above");
    }

    #[test]
    fn the_key_at_the_position_is_named_not_its_neighbour() {
        // An unknown top-level key after a block: not `limits.limits2`.
        let doc = "limits:\n  header_read_timeout: 10s\nlimits2: 3\n";
        assert_eq!(key_path(doc, 3, 1), "limits2");
        // A value reported at its key inside a flow mapping.
        let doc = "rules:\n  - name: a\n    when: { status: bogus }\n";
        assert_eq!(key_path(doc, 3, 13), "rules.when.status");
        // A line with a scalar value is never a parent: a mis-indented key after it,
        // with a comment between, is itself.
        let doc = "upstream: http://127.0.0.1:3000\n# comment\n  listen: 127.0.0.1:8080\n";
        assert_eq!(key_path(doc, 3, 3), "listen");
        // A position in a comment names no key rather than a wrong one.
        assert_eq!(key_path(doc, 2, 3), "");
    }

    #[test]
    fn finds_keys() {
        assert_eq!(find_key(DOC, "lists.block"), Some((6, 3)));
        assert_eq!(find_key(DOC, "listen"), Some((1, 1)));
        assert_eq!(find_key(DOC, "nope"), None);
    }
}
