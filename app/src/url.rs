//! URL helpers shared by the server and the browser.

/// Percent-encodes `text` for use as one query parameter value. `/` stays readable because
/// return-to paths are the main use.
pub fn encode_query_value(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                encoded.push(char::from(byte))
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// Maximum length of a return-to path; longer ones fall back to `/`.
const MAX_RETURN_TO: usize = 2048;

/// Returns `target` if it is a path on this portal, else `None`.
///
/// Only same-origin relative paths pass: one leading `/`, no `//` or `/\` (which browsers
/// read as a host), and no scheme. Control characters, whitespace and backslashes are
/// rejected anywhere, because browsers turn `\` into `/` and drop tabs and newlines before
/// resolving a URL.
pub fn safe_return_to(target: &str) -> Option<&str> {
    let bytes = target.as_bytes();
    let is_path = bytes.first() == Some(&b'/') && !matches!(bytes.get(1), Some(b'/' | b'\\'));
    let is_clean = !target
        .chars()
        .any(|c| c.is_control() || c == '\\' || c.is_whitespace());
    let safe = is_path && is_clean && target.len() <= MAX_RETURN_TO;
    // The sign-in routes themselves would loop.
    let loops = target.starts_with("/auth/");
    (safe && !loops).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_accepts_local_paths() {
        for path in ["/", "/me", "/approvals?page=2", "/requests/42#timeline"] {
            assert_eq!(safe_return_to(path), Some(path), "{path}");
        }
    }

    #[test]
    fn return_to_rejects_other_origins() {
        for target in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            " /me",
            "javascript:alert(1)",
            "evil.example",
            "",
            "/auth/login",
        ] {
            assert_eq!(safe_return_to(target), None, "{target:?}");
        }
    }

    #[test]
    fn return_to_rejects_overlong_path() {
        let long = format!("/{}", "a".repeat(MAX_RETURN_TO));
        assert_eq!(safe_return_to(&long), None);
    }

    #[test]
    fn query_value_encoding() {
        assert_eq!(encode_query_value("/me?x=1&y=2"), "/me%3Fx%3D1%26y%3D2");
        assert_eq!(encode_query_value("é"), "%C3%A9");
    }
}
