//! `${env:NAME}` and `${file:PATH}` in any string value of the configuration: resolved once at
//! load, so secrets can stay out of the file. An unresolved reference names the key and the
//! reference, never a value.

use figment::value::{Dict, Value};

/// Why a reference could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{reference}: {why}")]
pub struct Unresolved {
    /// The configuration key holding it, dotted (`sinks.kafka.librdkafka.sasl.password`).
    pub key: String,
    /// The reference as written, e.g. `${file:/run/secrets/kafka}`.
    pub reference: String,
    pub why: String,
}

/// The top-level tables of `root` that hold a reference, with every reference in them resolved
/// (to be merged over the configuration); `None` when there is none.
pub fn resolve(root: &Value) -> Result<Option<Dict>, Unresolved> {
    let Value::Dict(_, tables) = root else {
        return Ok(None);
    };
    let mut out = Dict::new();
    for (name, table) in tables {
        if holds_reference(table) {
            out.insert(name.clone(), resolved(table, name)?);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

fn holds_reference(v: &Value) -> bool {
    match v {
        Value::String(_, s) => s.contains("${env:") || s.contains("${file:"),
        Value::Dict(_, d) => d.values().any(holds_reference),
        Value::Array(_, a) => a.iter().any(holds_reference),
        _ => false,
    }
}

/// `v` with every reference resolved; `key` is its dotted path.
fn resolved(v: &Value, key: &str) -> Result<Value, Unresolved> {
    Ok(match v {
        Value::String(tag, s) => Value::String(*tag, substitute(s, key)?),
        Value::Dict(tag, d) => {
            let mut out = Dict::new();
            for (k, v) in d {
                out.insert(k.clone(), resolved(v, &format!("{key}.{k}"))?);
            }
            Value::Dict(*tag, out)
        }
        Value::Array(tag, a) => {
            let items = a
                .iter()
                .enumerate()
                .map(|(i, v)| resolved(v, &format!("{key}[{i}]")));
            Value::Array(*tag, items.collect::<Result<_, _>>()?)
        }
        other => other.clone(),
    })
}

/// `text` with each `${env:NAME}` and `${file:PATH}` replaced by what it names.
pub fn substitute(text: &str, key: &str) -> Result<String, Unresolved> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = next_reference(rest) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let Some(end) = tail.find('}') else {
            out.push_str(tail);
            return Ok(out);
        };
        let reference = &tail[..=end];
        out.push_str(&lookup(reference).map_err(|why| Unresolved {
            key: key.to_owned(),
            reference: reference.to_owned(),
            why,
        })?);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn next_reference(s: &str) -> Option<usize> {
    [s.find("${env:"), s.find("${file:")]
        .into_iter()
        .flatten()
        .min()
}

/// The value `reference` (`${env:NAME}` or `${file:PATH}`) names.
fn lookup(reference: &str) -> Result<String, String> {
    let inner = &reference[2..reference.len() - 1];
    if let Some(name) = inner.strip_prefix("env:") {
        return std::env::var(name).map_err(|_| "the environment variable is not set".to_owned());
    }
    let path = inner.strip_prefix("file:").unwrap_or(inner);
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the file: {e}"))?;
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_replaced_anywhere_in_a_string() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        let url = format!(
            "amqp://bridge:${{file:{}}}@rabbit:5672/%2f?x=${{env:PATH}}",
            file.display()
        );
        let got = substitute(&url, "sinks.rabbit.url").expect("resolves");
        let path = std::env::var("PATH").expect("PATH");
        assert_eq!(
            got,
            format!("amqp://bridge:s3cret@rabbit:5672/%2f?x={path}")
        );
        assert_eq!(
            substitute("no reference", "k").expect("as is"),
            "no reference"
        );
        assert_eq!(substitute("${other:x}", "k").expect("as is"), "${other:x}");
    }

    #[test]
    fn an_unresolved_reference_names_the_key_and_the_reference() {
        let e =
            substitute("${env:C360_TEST_SURELY_UNSET_VARIABLE}", "ledger.url").expect_err("unset");
        assert_eq!(e.key, "ledger.url");
        assert_eq!(e.reference, "${env:C360_TEST_SURELY_UNSET_VARIABLE}");
        let e = substitute(
            "pw=${file:/nonexistent/c360}",
            "sinks.k.librdkafka.sasl.password",
        )
        .expect_err("missing file");
        assert_eq!(e.reference, "${file:/nonexistent/c360}");
        assert!(e.why.starts_with("cannot read the file"), "{}", e.why);
    }
}
