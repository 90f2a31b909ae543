//! How a state value maps to a file's bytes and back.
//!
//! - A value set by a script is stored as JSON and shown as a file like this: a
//!   string is its own text (no quotes, no newline added); anything else is compact
//!   JSON followed by a newline (`42\n`, `{"a":1}\n`), so `jq` reads maps.
//! - Bytes written to a file are kept exactly (a later `cat` returns them byte for
//!   byte) and typed like this: if they are valid UTF-8 JSON (surrounding whitespace
//!   allowed) the value is that JSON (`echo 41 > state/m` gives the number 41);
//!   otherwise it is a string, with one trailing newline removed (`echo hi` gives
//!   `"hi"`); bytes that are not UTF-8 become a string with U+FFFD replacements.

use serde_json::Value;

/// The file bytes of a value set by a script.
pub fn render(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        other => {
            let mut v = serde_json::to_vec(other).unwrap_or_default();
            v.push(b'\n');
            v
        }
    }
}

/// The typed value of bytes written to a file.
pub fn parse_file(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            if let Ok(v) = serde_json::from_str::<Value>(text) {
                return v;
            }
            let t = text.strip_suffix('\n').unwrap_or(text);
            let t = t.strip_suffix('\r').unwrap_or(t);
            Value::String(t.to_string())
        }
        Err(_) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_bytes_to_values() {
        assert_eq!(parse_file(b"41\n"), json!(41));
        assert_eq!(parse_file(b" 1.5 "), json!(1.5));
        assert_eq!(parse_file(b"{\"a\":[1,2]}\n"), json!({"a":[1,2]}));
        assert_eq!(parse_file(b"true"), json!(true));
        assert_eq!(parse_file(b"hello\n"), json!("hello"));
        assert_eq!(parse_file(b"hello"), json!("hello"));
        assert_eq!(parse_file(b"\"quoted\""), json!("quoted"));
        assert_eq!(parse_file(b""), json!(""));
        assert_eq!(parse_file(b"\xff\xfe"), json!("\u{fffd}\u{fffd}"));
    }

    #[test]
    fn values_to_file_bytes() {
        assert_eq!(render(&json!(42)), b"42\n");
        assert_eq!(render(&json!("hi")), b"hi");
        assert_eq!(render(&json!({"a":1})), b"{\"a\":1}\n");
        assert_eq!(render(&json!(null)), b"null\n");
    }

    #[test]
    fn rendered_non_strings_parse_back_to_themselves() {
        for v in [
            json!(1),
            json!(-2.5),
            json!([1, "a"]),
            json!({"k": {"n": null}}),
            json!(false),
        ] {
            assert_eq!(parse_file(&render(&v)), v);
        }
    }
}
