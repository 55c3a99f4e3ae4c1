//! HTTPS: the rustls certificate pair in force, re-read when its files change and on SIGHUP.

use crate::config::TlsConfig;
use crate::config::watch::Trigger;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

/// Why a certificate pair cannot be used (the pair in force stays).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate in it ({reason})", path.display())]
    NoCertificate { path: PathBuf, reason: String },
    #[error("{}: no PEM private key in it ({reason})", path.display())]
    NoKey { path: PathBuf, reason: String },
    #[error("the certificate and key cannot be used together: {0}")]
    Rejected(#[from] rustls::Error),
    #[error("{}: the first certificate cannot be read as X.509 ({reason})", path.display())]
    NotX509 { path: PathBuf, reason: String },
}

/// The pair in force, and what the last look at the files saw.
pub struct Tls {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// Digest of the last bytes looked at (in force or refused), so a poll reports a change once.
    seen: Mutex<[u8; 32]>,
}

impl Tls {
    /// Loads the pair; a broken pair at start-up is an error (there is nothing to keep).
    pub fn load(files: &TlsConfig) -> Result<Self, TlsError> {
        let (cert, key) = read_pair(files)?;
        let (config, not_after) = server_config(files, &cert, &key)?;
        crate::telemetry::metrics::tls_cert_expiry(not_after);
        Ok(Self {
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(digest(&cert, &key)),
        })
    }

    /// An acceptor with the pair in force: a connection keeps the pair it was accepted with.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TlsAcceptor::from(config)
    }

    /// Reads the files again; on a poll only when their bytes changed. Returns the `result`
    /// counted in `c360_tls_reloads_total`, or `None` when a poll saw no change.
    pub fn reload(&self, trigger: Trigger) -> Option<&'static str> {
        let read = read_pair(&self.files);
        let now = match &read {
            Ok((c, k)) => digest(c, k),
            Err(e) => Sha256::digest(e.to_string().as_bytes()).into(),
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if trigger == Trigger::Poll && *seen == now {
            return None;
        }
        *seen = now;
        let result = match read.and_then(|(c, k)| server_config(&self.files, &c, &k)) {
            Ok((config, not_after)) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
                crate::telemetry::metrics::tls_cert_expiry(not_after);
                tracing::info!(cert = %self.files.cert_file.display(), trigger = trigger.name(),
                    "TLS certificate re-read: the new pair is served to new connections");
                "ok"
            }
            Err(e) => {
                tracing::warn!(
                    trigger = trigger.name(),
                    "TLS certificate re-read: {e}; the previous pair stays in force"
                );
                "error"
            }
        };
        crate::telemetry::metrics::tls_reload(result);
        Some(result)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        path: path.to_owned(),
        source,
    })
}

fn read_pair(files: &TlsConfig) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    Ok((read(&files.cert_file)?, read(&files.key_file)?))
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(cert);
    h.update([0]);
    h.update(key);
    h.finalize().into()
}

/// The notAfter of `cert` (DER), in Unix seconds.
fn not_after(files: &TlsConfig, cert: &CertificateDer<'_>) -> Result<i64, TlsError> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .map_err(|e| TlsError::NotX509 {
            path: files.cert_file.clone(),
            reason: e.to_string(),
        })
}

/// A rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1 by ALPN) from PEM bytes, and the
/// notAfter (Unix seconds) of its certificate (the first of the chain).
fn server_config(
    files: &TlsConfig,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(ServerConfig, i64), TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: files.cert_file.clone(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: files.cert_file.clone(),
            reason: "empty".into(),
        });
    };
    let not_after = not_after(files, leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::NoKey {
        path: files.key_file.clone(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let files = TlsConfig {
            cert_file: "c.pem".into(),
            key_file: "k.pem".into(),
        };
        let e = server_config(&files, b"not pem", b"not pem").unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let missing = read(Path::new("/nonexistent/cert.pem")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/cert.pem"));
    }

    #[test]
    fn the_certificates_not_after_is_read() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let cert = params.self_signed(&key).expect("certificate");
        let files = TlsConfig {
            cert_file: "c.pem".into(),
            key_file: "k.pem".into(),
        };
        let (_, not_after) = server_config(
            &files,
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .expect("a usable pair");
        assert_eq!(not_after, 1_936_742_400, "2031-05-17T00:00:00Z");
    }
}
