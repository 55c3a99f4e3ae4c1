//! A YAML rendering of a JSON value, for `asyncapi`: block style, every string double-quoted.
//!
//! Written here rather than taken from a crate: serde_yaml is unmaintained and the document is
//! plain data. Every scalar is emitted as JSON (strings as JSON strings, which are valid YAML
//! double-quoted scalars), so no value can be mistaken for another type, and the AsyncAPI
//! reference parser reads every generated document back (scripts/asyncapi-check.sh).

use serde_json::Value;
use std::fmt::Write;

/// `value` as a YAML document.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => mapping(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => sequence(&mut out, a, 0),
        other => {
            out.push_str(&other.to_string());
            out.push('\n');
        }
    }
    out
}

fn mapping(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    for (k, v) in m {
        let _ = write!(out, "{:indent$}{}:", "", key(k));
        node(out, v, indent);
    }
}

/// A mapping key: plain when it is a simple word YAML cannot read as anything but a string,
/// double-quoted otherwise.
fn key(k: &str) -> String {
    let word = k.starts_with(|c: char| c.is_ascii_alphabetic())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    const SPECIAL: [&str; 9] = ["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    if word && !SPECIAL.contains(&k.to_ascii_lowercase().as_str()) {
        k.to_owned()
    } else {
        Value::String(k.to_owned()).to_string()
    }
}

fn sequence(out: &mut String, a: &[Value], indent: usize) {
    for v in a {
        let _ = write!(out, "{:indent$}-", "");
        node(out, v, indent);
    }
}

/// The value after `key:` or `-`: a scalar (or empty collection) on the same line, otherwise
/// a nested block two spaces deeper.
fn node(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            mapping(out, m, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            sequence(out, a, indent + 2);
        }
        scalar => {
            let _ = writeln!(out, " {scalar}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_blocks_with_quoted_scalars() {
        let v = json!({
            "asyncapi": "3.0.0",
            "n": 2,
            "yes": true,
            "$ref": "#/x",
            "ce-id": "x",
            "list": ["a: b", {"k": "#x"}],
            "empty": {},
            "none": [],
            "nested": {"q": "line\nbreak \"quoted\""}
        });
        let y = to_string(&v);
        assert_eq!(
            y,
            "\"$ref\": \"#/x\"\nasyncapi: \"3.0.0\"\nce-id: \"x\"\nempty: {}\nlist:\n  - \"a: b\"\n  -\n    k: \"#x\"\n\"n\": 2\nnested:\n  q: \"line\\nbreak \\\"quoted\\\"\"\nnone: []\n\"yes\": true\n"
        );
    }
}
