//! RabbitMQ over TLS: the `[sinks.NAME.tls]` files read at every connect, and connect errors
//! worded as `tls: …` or `authentication failed: …`.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[sinks.NAME.tls]` of an `amqps://` sink: the CA to verify the broker with (the system's CAs
/// when unset) and a client certificate for mutual TLS (and `auth_mechanism = "external"`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitTls {
    /// PEM file of the CA (or chain) that signed the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain).
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
}

/// A TLS file that could not be read; the sink stays not ready and tries again.
#[derive(Debug, thiserror::Error)]
#[error("tls: cannot read {key} {path}: {source}")]
pub struct TlsFileError {
    key: &'static str,
    path: String,
    #[source]
    source: std::io::Error,
}

impl RabbitTls {
    /// Whether a client certificate is configured (both files; `validate` refuses one alone).
    pub fn has_client_cert(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// Reads the files now, so a CA or certificate fixed on disk is used at the next connect.
    pub fn load(&self) -> Result<OwnedTLSConfig, TlsFileError> {
        let cert_chain = match &self.ca_file {
            Some(p) => Some(String::from_utf8_lossy(&read("ca_file", p)?).into_owned()),
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read("cert_file", cert)?,
                key: read("key_file", key)?,
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        key,
        path: path.display().to_string(),
        source,
    })
}

/// Why a connection attempt failed, in the words `/readyz` and the logs use: a refused login
/// is `authentication failed: …`, a failed handshake `tls: …`, anything else `cannot connect: …`.
pub fn describe_connect_error(e: &lapin::Error, tls: bool) -> String {
    let text = e.to_string();
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind()
        && amqp.get_id() == 403
    {
        return format!("authentication failed: {}", amqp.get_message().as_str());
    }
    if matches!(e.kind(), lapin::ErrorKind::AuthProviderError(_)) || text.contains("ACCESS_REFUSED")
    {
        return format!("authentication failed: {text}");
    }
    if tls && matches!(e.kind(), lapin::ErrorKind::IOError(_)) && is_handshake_error(&text) {
        return format!("tls: {text}");
    }
    format!("cannot connect: {text}")
}

/// rustls's words for a failed handshake (certificate checks, alerts from the peer).
fn is_handshake_error(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["certificate", "handshake", "alert", "tls", "ssl"]
        .iter()
        .any(|w| t.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_ca_file_names_the_key_and_path() {
        let tls = RabbitTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = tls.load().expect_err("no such file");
        let text = e.to_string();
        assert!(
            text.starts_with("tls: cannot read ca_file /nonexistent/ca.pem"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_login_reads_as_authentication_failed() {
        let amqp =
            lapin::protocol::AMQPError::from_id(403, "ACCESS_REFUSED - Login was refused".into())
                .expect("known code");
        let e: lapin::Error = lapin::ErrorKind::ProtocolError(amqp).into();
        assert!(describe_connect_error(&e, true).starts_with("authentication failed: "));
    }

    #[test]
    fn a_certificate_error_reads_as_tls_only_over_tls() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        let e: lapin::Error = lapin::ErrorKind::IOError(std::sync::Arc::new(io)).into();
        let over_tls = describe_connect_error(&e, true);
        assert!(
            over_tls.starts_with("tls: ") && over_tls.contains("UnknownIssuer"),
            "{over_tls}"
        );
        assert!(describe_connect_error(&e, false).starts_with("cannot connect: "));
    }
}
