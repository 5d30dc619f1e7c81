//! `${NAME}` expansion in configuration strings.

use thiserror::Error;

/// Why a string could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvError {
    /// `${NAME}` names a variable that is not set (and has no `:-default`).
    #[error("environment variable `{0}` is not set (use ${{{0}:-default}} for a default)")]
    Unset(String),
    /// `${` without its closing `}`.
    #[error("unterminated `${{` in `{0}`")]
    Unterminated(String),
    /// `${A:-${B}}`: a default may not refer to another variable.
    #[error("a default may not contain another ${{...}} in `{0}`")]
    Nested(String),
    /// `${}` or a name with characters other than letters, digits and `_`.
    #[error("bad variable name `{0}` (letters, digits and _ only)")]
    BadName(String),
}

/// Replaces every `${NAME}` (or `${NAME:-default}`) in `input` using `lookup`.
/// `$$` stands for a literal `$`.
pub fn expand_with(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, EnvError> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| EnvError::Unterminated(input.to_string()))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if default.is_some_and(|d| d.contains("${")) {
                return Err(EnvError::Nested(input.to_string()));
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(EnvError::BadName(name.to_string()));
            }
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => match default {
                    Some(d) => out.push_str(d),
                    None => return Err(EnvError::Unset(name.to_string())),
                },
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand_with`] over the process environment.
pub fn expand(input: &str) -> Result<String, EnvError> {
    expand_with(input, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_default_and_literal() {
        assert_eq!(
            expand_with("a${HOME_DIR}b", env).as_deref(),
            Ok("a/home/xb")
        );
        assert_eq!(expand_with("${NOPE:-dflt}", env).as_deref(), Ok("dflt"));
        assert_eq!(expand_with("${NOPE:-}", env).as_deref(), Ok(""));
        assert_eq!(expand_with("${EMPTY:-x}", env).as_deref(), Ok(""));
        assert_eq!(expand_with("cost $$5 $x", env).as_deref(), Ok("cost $5 $x"));
        assert_eq!(expand_with("plain", env).as_deref(), Ok("plain"));
    }

    #[test]
    fn names_the_unset_variable() {
        let err = expand_with("key=${SECRET_KEY}", env).unwrap_err();
        assert_eq!(err, EnvError::Unset("SECRET_KEY".into()));
        assert!(err.to_string().contains("SECRET_KEY"));
        assert!(matches!(
            expand_with("${OPEN", env),
            Err(EnvError::Unterminated(_))
        ));
        assert!(matches!(expand_with("${}", env), Err(EnvError::BadName(_))));
        assert!(matches!(
            expand_with("${NOPE:-${HOME_DIR}}", env),
            Err(EnvError::Nested(_))
        ));
        assert!(matches!(
            expand_with("${A B}", env),
            Err(EnvError::BadName(_))
        ));
    }
}
