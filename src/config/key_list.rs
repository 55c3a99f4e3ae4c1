//! Webhook key lists as the configuration gives them: a separated list (`keys_env`) or a keys
//! file (one key a line), and catalog360's test key, which is never a configured key.

use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};

/// The key catalog360 signs its "test webhook" ping with (an empty batch).
pub const TEST_KEY: &str = "test-webhook";

/// Why keys could not be taken from a file. Never holds a key.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not UTF-8 text", path.display())]
    NotText { path: PathBuf },
    #[error("{} holds no key", path.display())]
    Empty { path: PathBuf },
    #[error("{} holds \"{TEST_KEY}\", catalog360's test key, whose batches never publish", path.display())]
    TestKey { path: PathBuf },
}

impl KeysError {
    /// The `result` label of `c360_key_reloads_total` for this failure.
    pub fn result(&self) -> &'static str {
        match self {
            KeysError::Unreadable { .. } => "error",
            KeysError::Empty { .. } => "empty",
            KeysError::NotText { .. } | KeysError::TestKey { .. } => "invalid",
        }
    }
}

/// Keys separated by `sep`, trimmed, empty entries left out.
pub fn split(s: &str, sep: char) -> Vec<SecretString> {
    s.split(sep)
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| SecretString::from(k.to_owned()))
        .collect()
}

/// Reads a keys file: one key a line, blank lines ignored; at least one key, never the test key.
pub fn read_file(path: &Path) -> Result<Vec<SecretString>, KeysError> {
    parse(path, &read_bytes(path)?)
}

/// The bytes of a keys file.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, KeysError> {
    std::fs::read(path).map_err(|source| KeysError::Unreadable {
        path: path.to_owned(),
        source,
    })
}

/// The keys of a keys file's bytes: one a line, blank lines ignored; at least one key, never
/// the test key.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<SecretString>, KeysError> {
    let path = path.to_owned();
    let text = std::str::from_utf8(bytes).map_err(|_| KeysError::NotText { path: path.clone() })?;
    let keys = split(text, '\n');
    if keys.is_empty() {
        return Err(KeysError::Empty { path });
    }
    if keys.iter().any(|k| k.expose_secret() == TEST_KEY) {
        return Err(KeysError::TestKey { path });
    }
    Ok(keys)
}
