//! Webhook keys: where they come from (inline, `keys_env`, `keys_file`), and the re-reading of
//! `keys_file` when it changes or on SIGHUP, swapping the new key set in atomically.
//!
//! Inline keys and `keys_env` are read once at start-up (a process cannot see a change of its
//! own environment); only `keys_file` changes while running. The file is polled: once every
//! `server.keys_poll_interval` its resolved path is read (following symlinks, so a Kubernetes
//! `..data` swap is seen like any rewrite) and compared with what was seen last time.

use crate::config::WebhookConfig;
pub use crate::config::key_list::{KeysError, parse, read_bytes, read_file, split};
use crate::config::watch::Trigger;
use crate::telemetry::metrics as m;
use crate::webhook::signature::Verifier;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Where some of a webhook's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Inline,
    Env(String),
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Inline => f.write_str("inline"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Each configured source of a loaded webhook's keys, with how many keys it gave.
pub fn sources(wh: &WebhookConfig) -> Vec<(Origin, usize)> {
    let mut out = Vec::new();
    if !wh.keys.is_empty() {
        out.push((Origin::Inline, wh.keys.len()));
    }
    if let Some(var) = &wh.keys_env {
        out.push((Origin::Env(var.clone()), wh.env_keys.len()));
    }
    if let Some(path) = &wh.keys_file {
        out.push((Origin::File(path.clone()), wh.file_keys.len()));
    }
    out
}

/// What the last look at a keys file saw: a digest of its bytes, or the kind of read error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Bytes([u8; 32]),
    Failed(std::io::ErrorKind),
}

impl Seen {
    fn of(read: &Result<Vec<u8>, KeysError>) -> Seen {
        match read {
            Ok(bytes) => Seen::Bytes(Sha256::digest(bytes).into()),
            Err(KeysError::Unreadable { source, .. }) => Seen::Failed(source.kind()),
            Err(_) => Seen::Failed(std::io::ErrorKind::Other),
        }
    }
}

/// A webhook's `keys_file` and what the reloads know of it.
struct KeyFile {
    path: PathBuf,
    state: Mutex<FileState>,
}

struct FileState {
    /// `None` until the first look after start-up.
    seen: Option<Seen>,
    /// Digest of the file's keys in force.
    applied: [u8; 32],
}

/// One webhook's key set in force, and how to renew it from its keys file.
pub struct WebhookKeys {
    webhook: Arc<str>,
    /// Inline and `keys_env` keys: fixed for the life of the process, and first in the set.
    fixed: Vec<SecretString>,
    accept_test_key: bool,
    file: Option<KeyFile>,
    current: RwLock<Arc<Verifier>>,
}

impl WebhookKeys {
    /// The keys of a loaded webhook (inline, then `keys_env`, then `keys_file`).
    pub fn new(webhook: Arc<str>, wh: &WebhookConfig) -> Self {
        let fixed: Vec<SecretString> = wh.keys.iter().chain(&wh.env_keys).cloned().collect();
        let file = wh.keys_file.as_ref().map(|path| KeyFile {
            path: path.clone(),
            state: Mutex::new(FileState {
                seen: None,
                applied: digest(&wh.file_keys),
            }),
        });
        let all = fixed.iter().chain(&wh.file_keys).cloned().collect();
        Self {
            webhook,
            current: RwLock::new(Arc::new(Verifier::new(all, wh.accept_test_ping))),
            fixed,
            accept_test_key: wh.accept_test_ping,
            file,
        }
    }

    /// The key set in force. A request takes it once (a read lock and a reference count) and
    /// verifies with it, so a reload never changes the keys of a request under way.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }

    /// Reads the keys file again. Returns the `result` it counted in `c360_key_reloads_total`,
    /// or `None` when there was nothing to report (no file, or a poll that saw no change).
    pub fn reload(&self, trigger: Trigger) -> Option<&'static str> {
        let file = self.file.as_ref()?;
        let mut state = file.state.lock().unwrap_or_else(PoisonError::into_inner);
        let read = read_bytes(&file.path);
        let seen = Seen::of(&read);
        let first_look = state.seen.is_none();
        if trigger == Trigger::Poll && state.seen == Some(seen) {
            return None;
        }
        state.seen = Some(seen);
        let result = match read.and_then(|bytes| parse(&file.path, &bytes)) {
            Err(e) => self.refuse(&e, trigger),
            Ok(keys) if digest(&keys) == state.applied => {
                if trigger == Trigger::Poll && first_look {
                    return None;
                }
                self.log_unchanged(&file.path, keys.len(), trigger)
            }
            Ok(keys) => {
                state.applied = digest(&keys);
                self.install(&file.path, keys, trigger)
            }
        };
        m::key_reload(&self.webhook, result);
        Some(result)
    }

    fn install(&self, path: &Path, keys: Vec<SecretString>, trigger: Trigger) -> &'static str {
        let count = keys.len();
        let all = self.fixed.iter().cloned().chain(keys).collect();
        let verifier = Arc::new(Verifier::new(all, self.accept_test_key));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = verifier;
        tracing::info!(webhook = %self.webhook, path = %path.display(), keys = count, trigger = trigger.name(),
            "keys file re-read: the new key set is in force");
        "ok"
    }

    fn refuse(&self, e: &KeysError, trigger: Trigger) -> &'static str {
        tracing::warn!(webhook = %self.webhook, trigger = trigger.name(),
            "keys file re-read: {e}; the previous keys stay in force");
        e.result()
    }

    fn log_unchanged(&self, path: &Path, count: usize, trigger: Trigger) -> &'static str {
        tracing::info!(webhook = %self.webhook, path = %path.display(), keys = count, trigger = trigger.name(),
            "keys file re-read: same keys as before");
        "unchanged"
    }
}

/// A digest of a key list, to tell whether a re-read changed anything (never logged).
fn digest(keys: &[SecretString]) -> [u8; 32] {
    let mut h = Sha256::new();
    for k in keys {
        h.update(k.expose_secret().as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

/// Re-reads every webhook's keys file.
pub fn reload_all(webhooks: &[Arc<WebhookKeys>], trigger: Trigger) {
    for w in webhooks {
        w.reload(trigger);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::signature::{Verdict, sign};

    fn webhook(file: &Path) -> WebhookConfig {
        WebhookConfig {
            name: "w".into(),
            path: "/h".into(),
            keys: vec![SecretString::from("inline".to_owned())],
            keys_env: None,
            keys_file: Some(file.to_owned()),
            env_keys: vec![],
            file_keys: read_file(file).unwrap(),
            accept_test_ping: true,
            max_events: 100,
            source: None,
            max_depth: 128,
            allow_from: None,
        }
    }

    /// Which key of the set in force verifies a body signed with `key`, if any.
    fn verdict(keys: &WebhookKeys, key: &str) -> Option<Verdict> {
        let body = b"{\"events\":[]}";
        let sig = sign(key.as_bytes(), body);
        keys.verifier().verify(Some(sig.as_bytes()), body).ok()
    }

    #[test]
    fn files_are_one_key_a_line_and_bad_ones_say_why() {
        let p = Path::new("k");
        let keys = parse(p, b" new \r\n\nold\n").unwrap();
        let got: Vec<&str> = keys.iter().map(|k| k.expose_secret()).collect();
        assert_eq!(got, ["new", "old"]);
        assert_eq!(parse(p, b" \n\n").unwrap_err().result(), "empty");
        assert_eq!(
            parse(p, b"a\ntest-webhook\n").unwrap_err().result(),
            "invalid"
        );
        assert_eq!(parse(p, b"\xff\xfe").unwrap_err().result(), "invalid");
        let missing = read_file(Path::new("/nonexistent/keys")).unwrap_err();
        assert_eq!(missing.result(), "error");
        assert!(
            missing.to_string().contains("/nonexistent/keys"),
            "{missing}"
        );
    }

    #[test]
    fn a_changed_file_replaces_the_file_keys_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "old\n").unwrap();
        let keys = WebhookKeys::new("w".into(), &webhook(&path));
        assert_eq!(
            keys.reload(Trigger::Poll),
            None,
            "first look, same keys: silent"
        );
        assert_eq!(verdict(&keys, "old"), Some(Verdict::Key(1)));
        std::fs::write(&path, "new\nold\n").unwrap();
        let before = keys.verifier();
        assert_eq!(keys.reload(Trigger::Poll), Some("ok"));
        assert_eq!(verdict(&keys, "new"), Some(Verdict::Key(1)));
        assert_eq!(verdict(&keys, "inline"), Some(Verdict::Key(0)));
        let body = b"{}";
        let sig = sign(b"new", body);
        assert!(
            before.verify(Some(sig.as_bytes()), body).is_err(),
            "a taken set never changes"
        );
        assert_eq!(
            keys.reload(Trigger::Poll),
            None,
            "no change, nothing to report"
        );
        assert_eq!(keys.reload(Trigger::Signal), Some("unchanged"));
    }

    #[test]
    fn a_broken_file_keeps_the_keys_in_force_and_reports_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "old\n").unwrap();
        let keys = WebhookKeys::new("w".into(), &webhook(&path));
        for (content, result) in [(&b""[..], "empty"), (b"test-webhook\n", "invalid")] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(keys.reload(Trigger::Poll), Some(result));
            assert_eq!(keys.reload(Trigger::Poll), None, "reported once");
            assert_eq!(verdict(&keys, "old"), Some(Verdict::Key(1)));
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(keys.reload(Trigger::Poll), Some("error"));
        assert_eq!(keys.reload(Trigger::Signal), Some("error"));
        assert_eq!(verdict(&keys, "old"), Some(Verdict::Key(1)));
        std::fs::write(&path, "old\n").unwrap();
        assert_eq!(keys.reload(Trigger::Poll), Some("unchanged"));
    }

    #[test]
    fn a_kubernetes_symlink_swap_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let version = |name: &str, content: &str| {
            std::fs::create_dir(d.join(name)).unwrap();
            std::fs::write(d.join(name).join("keys"), content).unwrap();
        };
        version("..v1", "old\n");
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/keys", d.join("keys")).unwrap();
        let keys = WebhookKeys::new("w".into(), &webhook(&d.join("keys")));
        version("..v2", "new\n");
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join("..v1")).unwrap();
        assert_eq!(keys.reload(Trigger::Poll), Some("ok"));
        assert_eq!(verdict(&keys, "new"), Some(Verdict::Key(1)));
        assert_eq!(verdict(&keys, "old"), None);
    }
}
