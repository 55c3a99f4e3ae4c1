//! The documentation cannot drift from the code: every configuration key the config structs
//! accept is in docs/configuration.md and every key written there exists; every metric of
//! `METRICS` is in docs/operations.md and every `c360_*` metric the docs name exists; every
//! relative link of README.md and docs/*.md reaches a file and, with `#anchor`, a heading; the
//! README's first configuration loads. No broker needed.
//!
//! The accepted keys come from a scan of the Rust sources (`src/`, `sinks/src/`): the fields of
//! every `Deserialize` struct reachable from `Config`, with serde's `rename`, `skip` and
//! `flatten`, `Option`, `Vec` (`webhooks[].name`) and maps (`sinks.NAME.url`), and the tag of a
//! tagged enum (`sinks.NAME.type`). So a field added to any of them must be documented. The
//! scan is checked against serde itself: every key of every file in `config/` (which the
//! bridge loads) must be one the scan found.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CONFIGURATION: &str = "docs/configuration.md";
const OPERATIONS: &str = "docs/operations.md";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![Path::new(ROOT).join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

// ---------------------------------------------------------------------------------------------
// Markdown: prose lines (outside fenced code), tables, headings and their GitHub anchors, links.
// ---------------------------------------------------------------------------------------------

/// The lines outside fenced code blocks, with their 1-based numbers.
fn prose(markdown: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in markdown.lines().enumerate() {
        let t = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| t.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, `-`, `_` and
/// spaces stay), each space a `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor GitHub gives the headings of `markdown` (a repeated heading gets `-1`, `-2`…).
pub fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(markdown) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// `text` without its inline code spans (a link inside backticks is no link).
fn without_code(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        }
    }
    out
}

/// The targets of the inline links (`[text](target)`) and link definitions (`[x]: target`).
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose(markdown) {
        let text = without_code(line);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((n, target.to_owned()));
            rest = &after[end..];
        }
        let t = text.trim_start();
        if t.starts_with('[')
            && let Some(i) = t.find("]:")
        {
            let target = t[i + 2..].split_whitespace().next().unwrap_or("");
            out.push((n, target.to_owned()));
        }
    }
    out
}

/// `base.join(rel)` with `.` and `..` resolved.
fn normalize(base: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// What is wrong with the relative links of `file` (whose text is `markdown`).
pub fn broken_links(file: &Path, markdown: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let dir = file.parent().expect("a file has a directory");
    for (n, target) in links(markdown) {
        if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
        let at = format!("{}:{n}: {target}", file.display());
        if path.is_empty() {
            if !anchors(markdown).contains(anchor) {
                problems.push(format!("{at}: no heading with the anchor #{anchor}"));
            }
            continue;
        }
        let resolved = normalize(dir, path);
        if !resolved.exists() {
            problems.push(format!("{at}: no file {}", resolved.display()));
            continue;
        }
        if anchor.is_empty() {
            continue;
        }
        if resolved.extension().is_none_or(|x| x != "md") {
            problems.push(format!("{at}: an anchor into a file that is not Markdown"));
        } else if !anchors(&read(&resolved)).contains(anchor) {
            problems.push(format!("{at}: no heading with the anchor #{anchor}"));
        }
    }
    problems
}

/// The backticked words of the first cell of every table body row of `markdown`.
fn first_cell_words(markdown: &str) -> Vec<(usize, String)> {
    let lines = prose(markdown);
    let mut out = Vec::new();
    for (i, &(n, line)) in lines.iter().enumerate() {
        let is_row = |l: &str| l.trim_start().starts_with('|');
        let is_rule = |l: &str| {
            l.trim().trim_matches('|').split('|').all(|c| {
                let c = c.trim();
                !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':')
            })
        };
        if !is_row(line) || is_rule(line) {
            continue;
        }
        // A header row is followed by the rule line.
        if lines.get(i + 1).is_some_and(|&(_, next)| is_rule(next)) {
            continue;
        }
        let cell = line.trim_start().trim_start_matches('|');
        let cell = cell.split(" | ").next().unwrap_or("").trim_end_matches('|');
        for (j, word) in cell.split('`').enumerate() {
            if j % 2 == 1 {
                out.push((n, word.to_owned()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The configuration keys the code accepts, from the sources.
// ---------------------------------------------------------------------------------------------

/// A `Deserialize` struct or enum of the sources.
#[derive(Debug, Clone)]
struct Item {
    file: PathBuf,
    /// The container's attributes (`#[serde(tag = "type")]`…).
    attrs: String,
    is_enum: bool,
    /// The text between the braces.
    body: String,
}

/// A field of a struct body: its serde attributes, name and type.
#[derive(Debug)]
struct Field {
    attrs: String,
    name: String,
    ty: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// `text` without `//` comments (the sources put no `//` inside a string of a config item).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text from `open` (an opening bracket at byte `start`) to its matching close, exclusive.
fn matched(text: &str, start: usize, open: char, close: char) -> &str {
    let mut depth = 0;
    for (i, c) in text[start..].char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return &text[start + 1..start + i];
            }
        }
    }
    panic!("unbalanced {open}{close}")
}

/// Every struct and enum deriving `Deserialize` in the sources, by name (several of one name
/// are kept: resolving an ambiguous name fails the test).
fn items() -> BTreeMap<String, Vec<Item>> {
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    rust_files(&Path::new(ROOT).join("sinks/src"), &mut files);
    let mut items: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    for file in files {
        let text = strip_comments(&read(&file));
        let lines: Vec<&str> = text.lines().collect();
        let offsets: Vec<usize> = lines
            .iter()
            .scan(0, |at, l| {
                let o = *at;
                *at += l.len() + 1;
                Some(o)
            })
            .collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let t = t.strip_prefix("pub ").unwrap_or(t);
            let (is_enum, rest) = if let Some(r) = t.strip_prefix("struct ") {
                (false, r)
            } else if let Some(r) = t.strip_prefix("enum ") {
                (true, r)
            } else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // The attributes above the item: back to the end of the previous item.
            let attrs: Vec<&str> = lines[..i]
                .iter()
                .rev()
                .take_while(|l| {
                    let l = l.trim_end();
                    !(l.ends_with('}') || l.ends_with(';') || l.ends_with('{'))
                })
                .copied()
                .collect();
            let attrs = attrs.into_iter().rev().collect::<Vec<_>>().join(" ");
            if !attrs.contains("Deserialize") {
                continue;
            }
            let Some(brace) = line.find('{') else {
                continue; // a tuple or unit struct: no keys of its own
            };
            let body = matched(&text, offsets[i] + brace, '{', '}').to_owned();
            items.entry(name).or_default().push(Item {
                file: file.clone(),
                attrs,
                is_enum,
                body,
            });
        }
    }
    items
}

/// The fields of a struct body.
fn fields(body: &str) -> Vec<Field> {
    let mut out = Vec::new();
    let mut attrs = String::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        if rest.starts_with("#[") {
            let inner = matched(rest, 1, '[', ']');
            attrs.push_str(&inner.replace('\n', " "));
            attrs.push('\n');
            rest = rest[inner.len() + 3..].trim_start();
            continue;
        }
        let decl = rest
            .strip_prefix("pub(crate) ")
            .or_else(|| rest.strip_prefix("pub "))
            .unwrap_or(rest);
        let colon = decl.find(':').expect("a field has a type");
        let name = decl[..colon].trim().trim_start_matches("r#").to_owned();
        // The type runs to the first comma outside brackets.
        let mut depth = 0i32;
        let mut end = decl.len();
        for (i, c) in decl[colon + 1..].char_indices() {
            match c {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    end = colon + 1 + i;
                    break;
                }
                _ => {}
            }
        }
        let ty = decl[colon + 1..end].trim().to_owned();
        out.push(Field {
            attrs: std::mem::take(&mut attrs),
            name,
            ty,
        });
        rest = decl[(end + 1).min(decl.len())..].trim_start();
    }
    out
}

/// The insides of every `serde(…)` attribute in `attrs`.
fn serde_args(attrs: &str) -> Vec<&str> {
    attrs
        .split("serde(")
        .skip(1)
        .map(|a| {
            let mut depth = 1;
            let end = a
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(a.len(), |(i, _)| i);
            &a[..end]
        })
        .collect()
}

/// The value of `key = "value"` inside serde attributes, if any.
fn serde_value(attrs: &str, key: &str) -> Option<String> {
    serde_args(attrs).into_iter().find_map(|a| {
        let i = a.find(&format!("{key} = \""))? + key.len() + 4;
        Some(a[i..].split('"').next()?.to_owned())
    })
}

/// Whether the serde attributes hold the bare word `word` (`skip`, `flatten`).
fn serde_flag(attrs: &str, word: &str) -> bool {
    serde_args(attrs)
        .into_iter()
        .flat_map(|a| a.split(','))
        .any(|w| w.trim() == word)
}

/// The last path segment of a type's name: `c360_sinks::kafka::KafkaConfig` → `KafkaConfig`.
fn type_name(ty: &str) -> &str {
    ty.rsplit("::").next().unwrap_or(ty).trim()
}

/// `Wrapper<Inner>` → `Inner`, for one of `wrappers`.
fn unwrap<'a>(ty: &'a str, wrappers: &[&str]) -> Option<&'a str> {
    let lt = ty.find('<')?;
    if !wrappers.contains(&type_name(&ty[..lt])) {
        return None;
    }
    Some(ty[lt + 1..ty.rfind('>')?].trim())
}

/// The configuration keys of the code: the leaves (which must be documented) and every key a
/// document may name (the leaves, the tables, the arrays and the maps).
#[derive(Debug, Default)]
pub struct Keys {
    pub leaves: BTreeSet<String>,
    pub known: BTreeSet<String>,
    /// Keys whose children are names of the user's choosing (`sinks` → `sinks.NAME`).
    pub maps: BTreeSet<String>,
}

impl Keys {
    pub fn from_sources() -> Self {
        let items = items();
        let mut keys = Keys::default();
        keys.walk_type(&items, "", "Config");
        assert!(
            keys.leaves.len() > 40,
            "the scan found only {} keys: {:?}",
            keys.leaves.len(),
            keys.leaves
        );
        keys
    }

    fn item<'a>(items: &'a BTreeMap<String, Vec<Item>>, name: &str) -> Option<&'a Item> {
        let found = items.get(name)?;
        assert!(
            found.len() == 1,
            "two Deserialize types named {name} ({:?}): the docs test cannot tell which one the configuration uses",
            found.iter().map(|i| &i.file).collect::<Vec<_>>()
        );
        found.first()
    }

    fn join(prefix: &str, name: &str) -> String {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    }

    /// The keys of a value of type `ty` at `path` (`""` for the root).
    fn walk_value(&mut self, items: &BTreeMap<String, Vec<Item>>, path: &str, ty: &str) {
        if let Some(inner) = unwrap(ty, &["Option", "Box"]) {
            return self.walk_value(items, path, inner);
        }
        if let Some(inner) = unwrap(ty, &["Vec"]) {
            if Self::item(items, type_name(inner)).is_some() {
                self.known.insert(path.to_owned());
                return self.walk_type(items, &format!("{path}[]"), type_name(inner));
            }
        }
        if let Some(inner) = unwrap(ty, &["BTreeMap", "HashMap", "IndexMap"]) {
            let value = inner.split_once(',').map_or(inner, |(_, v)| v.trim());
            if Self::item(items, type_name(value)).is_some() {
                self.known.insert(path.to_owned());
                self.maps.insert(path.to_owned());
                self.known.insert(format!("{path}.NAME"));
                return self.walk_type(items, &format!("{path}.NAME"), type_name(value));
            }
        }
        match Self::item(items, type_name(ty)) {
            Some(item) if !item.is_enum || Self::variant_types(item).next().is_some() => {
                self.known.insert(path.to_owned());
                self.walk_type(items, path, type_name(ty));
            }
            _ => {
                self.leaves.insert(path.to_owned());
                self.known.insert(path.to_owned());
            }
        }
    }

    /// The types of an enum's tuple variants (`Kafka(KafkaConfig)` → `KafkaConfig`).
    fn variant_types(item: &Item) -> impl Iterator<Item = &str> {
        item.body.split(',').filter_map(|v| {
            let v = v.trim();
            let open = v.find('(')?;
            Some(type_name(v[open + 1..].trim_end_matches(')')))
        })
    }

    /// The keys of the struct or tagged enum `name` under `prefix`.
    fn walk_type(&mut self, items: &BTreeMap<String, Vec<Item>>, prefix: &str, name: &str) {
        let item = Self::item(items, name)
            .unwrap_or_else(|| panic!("no Deserialize type {name} in src/ or sinks/src/"))
            .clone();
        if item.is_enum {
            if let Some(tag) = serde_value(&item.attrs, "tag") {
                let key = Self::join(prefix, &tag);
                self.leaves.insert(key.clone());
                self.known.insert(key);
            }
            for ty in Self::variant_types(&item)
                .map(str::to_owned)
                .collect::<Vec<_>>()
            {
                self.walk_type(items, prefix, &ty);
            }
            return;
        }
        for field in fields(&item.body) {
            if serde_flag(&field.attrs, "skip") || serde_flag(&field.attrs, "skip_deserializing") {
                continue;
            }
            if serde_flag(&field.attrs, "flatten") {
                self.walk_value(items, prefix, &field.ty);
                continue;
            }
            let key = serde_value(&field.attrs, "rename").unwrap_or(field.name);
            self.walk_value(items, &Self::join(prefix, &key), &field.ty);
        }
    }
}

/// Every key of a TOML file, as the docs write them (`webhooks[].name`, `sinks.NAME.url`); the
/// children of a key the code knows as a leaf (a librdkafka table) are not listed.
fn toml_keys(path: &Path, keys: &Keys) -> BTreeSet<String> {
    use figment::providers::{Format, Toml};
    use figment::value::Value;
    fn walk(value: &Value, path: String, keys: &Keys, out: &mut BTreeSet<String>) {
        if !path.is_empty() {
            out.insert(path.clone());
            if keys.leaves.contains(&path) {
                return;
            }
        }
        match value {
            Value::Dict(_, dict) => {
                for (k, v) in dict {
                    let k = if keys.maps.contains(&path) { "NAME" } else { k };
                    walk(v, Keys::join(&path, k), keys, out);
                }
            }
            Value::Array(_, items) if items.iter().all(|v| matches!(v, Value::Dict(..))) => {
                for v in items {
                    walk(v, format!("{path}[]"), keys, out);
                }
                // `[[routes]]` is a key of its own, not only `routes[]`.
            }
            _ => {}
        }
    }
    let value: Value = figment::Figment::from(Toml::file(path))
        .extract()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeSet::new();
    walk(&value, String::new(), keys, &mut out);
    out.retain(|k| !k.ends_with("[]"));
    out
}

// ---------------------------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------------------------

/// What is wrong between the keys of the code and the keys of docs/configuration.md.
pub fn config_key_problems(keys: &Keys, doc: &str) -> Vec<String> {
    let documented: BTreeMap<String, usize> = first_cell_words(doc)
        .into_iter()
        .map(|(n, w)| (w, n))
        .collect();
    let mut problems = Vec::new();
    for key in &keys.leaves {
        if !documented.contains_key(key) {
            problems.push(format!(
                "{CONFIGURATION}: the key `{key}` is accepted by the configuration structs but not documented"
            ));
        }
    }
    for (word, n) in &documented {
        if !keys.known.contains(word) {
            problems.push(format!(
                "{CONFIGURATION}:{n}: `{word}` is documented but no configuration struct has it"
            ));
        }
    }
    problems
}

/// The `c360_*` metric names written in backticks in `markdown` (`c360_x_total{label}` too; not
/// a crate name in a log filter such as `c360_bridge=debug`).
fn metric_mentions(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in markdown.lines().enumerate() {
        for (j, span) in line.split('`').enumerate() {
            if j % 2 == 0 || !span.starts_with("c360_") {
                continue;
            }
            let name: String = span
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let next = span[name.len()..].chars().next();
            if matches!(next, None | Some('{' | '[' | ' ')) {
                out.push((n + 1, name));
            }
        }
    }
    out
}

/// What is wrong between `METRICS` and the docs: a metric missing from the operations page's
/// tables, or a metric named anywhere that the code does not export.
pub fn metric_problems(
    metrics: &[&str],
    operations: &str,
    docs: &[(PathBuf, String)],
) -> Vec<String> {
    let tabled: BTreeSet<String> = first_cell_words(operations)
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    let mut problems = Vec::new();
    for m in metrics {
        if !tabled.contains(*m) {
            problems.push(format!(
                "{OPERATIONS}: the metric `{m}` of METRICS is in no table"
            ));
        }
    }
    let exported = |name: &str| {
        metrics.contains(&name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|b| metrics.contains(&b)))
    };
    for (file, text) in docs {
        for (n, name) in metric_mentions(text) {
            if !exported(&name) {
                problems.push(format!(
                    "{}:{n}: `{name}` is not a metric of METRICS",
                    file.display()
                ));
            }
        }
    }
    problems
}

fn metric_names() -> Vec<&'static str> {
    c360_bridge::telemetry::metrics::METRICS
        .iter()
        .map(|(name, _, _)| *name)
        .collect()
}

fn all_docs() -> Vec<(PathBuf, String)> {
    markdown_files()
        .into_iter()
        .map(|p| {
            let text = read(&p);
            (p, text)
        })
        .collect()
}

fn fail_on(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_configuration_key_is_documented_and_every_documented_key_exists() {
    let keys = Keys::from_sources();
    fail_on(config_key_problems(
        &keys,
        &read(&Path::new(ROOT).join(CONFIGURATION)),
    ));
}

/// The source scan agrees with serde: every key of the shipped configurations (which the
/// bridge loads: tests/it/asyncapi.rs runs `check` on each) is one the scan found.
#[test]
fn the_source_scan_finds_every_key_of_the_shipped_configurations() {
    let keys = Keys::from_sources();
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("config"))
        .expect("config/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.push(Path::new(ROOT).join("deploy/kubernetes/config.toml"));
    let mut problems = Vec::new();
    for file in files {
        for key in toml_keys(&file, &keys) {
            if !keys.known.contains(&key) {
                problems.push(format!(
                    "{}: `{key}` is not a key the source scan found",
                    file.display()
                ));
            }
        }
    }
    fail_on(problems);
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    fail_on(metric_problems(
        &metric_names(),
        &read(&Path::new(ROOT).join(OPERATIONS)),
        &all_docs(),
    ));
}

#[test]
fn every_relative_link_reaches_a_file_and_a_heading() {
    let mut problems = Vec::new();
    for (file, text) in all_docs() {
        problems.extend(broken_links(&file, &text));
    }
    fail_on(problems);
}

/// The README's first configuration is a valid one.
#[test]
fn the_readme_configuration_loads() {
    let readme = read(&Path::new(ROOT).join("README.md"));
    let start = readme
        .find("```toml\n")
        .expect("a toml block in the README")
        + 8;
    let toml = &readme[start..start + readme[start..].find("```").expect("closed")];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readme.toml");
    std::fs::write(&file, toml).unwrap();
    let config = c360_bridge::config::load(Some(&file))
        .unwrap_or_else(|e| panic!("the README's configuration: {e}"));
    assert_eq!(config.webhooks.len(), 1);
    assert!(config.sinks.contains_key("kafka"));
}

/// Each check fails on a planted mistake: they are not vacuous.
#[test]
fn each_check_fails_on_a_planted_mistake() {
    let keys = Keys::from_sources();
    let doc = read(&Path::new(ROOT).join(CONFIGURATION));
    // A field someone added to a struct and forgot to document.
    let mut more = Keys::from_sources();
    more.leaves.insert("server.new_knob".into());
    let problems = config_key_problems(&more, &doc);
    assert!(
        problems.len() == 1 && problems[0].contains("`server.new_knob`"),
        "{problems:?}"
    );
    // A key removed from the code but still documented.
    let stale = doc.replace(
        "\n| `server.listen` |",
        "\n| `server.old_knob` | – | gone |\n| `server.listen` |",
    );
    let problems = config_key_problems(&keys, &stale);
    assert!(
        problems.iter().any(|p| p.contains("`server.old_knob`")),
        "{problems:?}"
    );
    // A key's row deleted from the doc.
    let missing = doc.replace("| `ledger.timeout` |", "| ledger timeout |");
    let problems = config_key_problems(&keys, &missing);
    assert!(
        problems.iter().any(|p| p.contains("`ledger.timeout`")),
        "{problems:?}"
    );
    // The scan sees a new field of a nested struct, renamed and skipped fields as serde does.
    let body = "\n    /// doc\n    #[serde(rename = \"match\")]\n    pub pattern: String,\n    #[serde(skip)]\n    pub hidden: Vec<String>,\n    pub inner: Option<BTreeMap<String, String>>,\n";
    let names: Vec<String> = fields(&strip_comments(body))
        .into_iter()
        .filter(|f| !serde_flag(&f.attrs, "skip"))
        .map(|f| serde_value(&f.attrs, "rename").unwrap_or(f.name))
        .collect();
    assert_eq!(names, ["match", "inner"]);
    for key in [
        "server.tls.cert_file",
        "webhooks[].keys_file",
        "sinks.NAME.type",
        "sinks.NAME.create_topics.replication_factor",
        "sinks.NAME.tls.ca_file",
        "routes[].match",
        "telemetry.otlp_endpoint",
        "unrouted",
    ] {
        assert!(keys.leaves.contains(key), "{key}: {:?}", keys.leaves);
    }
    assert!(!keys.leaves.contains("webhooks[].env_keys"), "skip ignored");

    // Metrics: one missing from the operations page, one named that does not exist.
    let metrics = metric_names();
    let operations = read(&Path::new(ROOT).join(OPERATIONS));
    let without = operations.replace("| `c360_ledger_skips_total` |", "| ledger skips |");
    let problems = metric_problems(&metrics, &without, &[]);
    assert!(
        problems.len() == 1 && problems[0].contains("`c360_ledger_skips_total`"),
        "{problems:?}"
    );
    let invented = vec![(
        PathBuf::from("x.md"),
        "see `c360_events_lost_total{sink}` and `c360_publish_seconds_bucket` and `c360_bridge=debug`"
            .to_owned(),
    )];
    let problems = metric_problems(&metrics, &operations, &invented);
    assert!(
        problems.len() == 1 && problems[0].contains("`c360_events_lost_total`"),
        "{problems:?}"
    );

    // Links: a missing file, a missing anchor, a fine one, and links that are no links.
    let file = Path::new(ROOT).join("docs/x.md");
    let text = "[a](missing.md) [b](operations.md#no-such-heading) [c](operations.md#traces) \
                [d](#here) `[e](nowhere.md)` [f](https://example.com/x.md)\n\n## Here\n\n```\n[g](gone.md)\n```\n";
    let problems = broken_links(&file, text);
    assert!(
        problems.len() == 2
            && problems[0].contains("missing.md")
            && problems[1].contains("#no-such-heading"),
        "{problems:?}"
    );
    // GitHub's anchors.
    let a = anchors(
        "# Try it: `dev`\n## A missing topic is one topic's problem\n## Dup\n## Dup\n```\n# not a heading\n```\n",
    );
    let want: BTreeSet<String> = [
        "try-it-dev",
        "a-missing-topic-is-one-topics-problem",
        "dup",
        "dup-1",
    ]
    .map(String::from)
    .into();
    assert_eq!(a, want);
}
