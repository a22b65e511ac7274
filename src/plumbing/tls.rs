//! TLS with rustls, one crypto provider (ring) for everything: the API's server certificate
//! (`tls_cert`/`tls_key`), the crypto provider the HTTP client uses, and plain words for a
//! handshake that failed, whether the database's or the daemon's certificate did not verify.

use std::error::Error as StdError;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CertificateError, Error as TlsError, InconsistentKeys, ServerConfig};

/// The crypto provider of every TLS session this process opens or accepts.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default provider. reqwest is built without one of its own (its
/// default would compile a second crypto library), so this must run before any HTTP client is
/// built; calling it again is harmless.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A file of a TLS setting that cannot be used, with the setting's name.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsFileError {
    pub key: &'static str,
    pub message: String,
}

/// The API's server configuration from a certificate chain and its private key (PEM files),
/// offering HTTP/2 and HTTP/1.1. Each error names the setting whose file is at fault.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsFileError> {
    let certs = read_certificates(cert).map_err(|message| TlsFileError {
        key: "tls_cert",
        message,
    })?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsFileError {
        key: "tls_key",
        message: match e {
            pem::Error::NoItemsFound => format!("{} holds no PEM private key", key.display()),
            other => format!("cannot read {}: {}", key.display(), pem_error(other)),
        },
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError {
            key: "tls_cert",
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| match e {
            TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch) => TlsFileError {
                key: "tls_key",
                message: format!(
                    "{} is not the private key of the certificate in {}",
                    key.display(),
                    cert.display()
                ),
            },
            other => TlsFileError {
                key: "tls_key",
                message: format!("{}: {other}", key.display()),
            },
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file; an error (in words) when it holds none.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {}: {}", path.display(), pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn pem_error(error: pem::Error) -> String {
    match error {
        pem::Error::Io(e) => e.to_string(),
        other => format!("not a valid PEM file ({other:?})"),
    }
}

/// The rustls error behind `error`, if a handshake failed. sqlx and reqwest hand it over
/// wrapped in I/O errors (whose `source` skips what they wrap) and in their own.
pub fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a TlsError> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<TlsError>() {
            return Some(tls);
        }
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = rustls_error(inner) {
                return Some(tls);
            }
        }
        next = current.source();
    }
    None
}

/// True when the peer's certificate was not signed by a trusted authority: the one failure
/// that giving the right CA fixes.
pub fn is_unknown_issuer(error: &TlsError) -> bool {
    matches!(
        error,
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
    )
}

/// A failed handshake with `host`, in words: the certificate's fault when it did not verify
/// (the reason, as OpenSSL's "certificate verify failed" would be followed by), otherwise the
/// handshake's.
pub fn explain(error: &TlsError, host: &str) -> String {
    let TlsError::InvalidCertificate(reason) = error else {
        return format!("TLS handshake with {host} failed: {error}");
    };
    let why = match reason {
        CertificateError::UnknownIssuer => {
            "it is not signed by a trusted certificate authority".to_string()
        }
        CertificateError::NotValidForName => "it is not valid for that host name".to_string(),
        CertificateError::NotValidForNameContext { presented, .. } if presented.is_empty() => {
            "it is not valid for that host name (it names none)".to_string()
        }
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "it is not valid for that host name (it is for {})",
            presented
                .iter()
                .map(|name| plain_name(name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired".to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet".to_string()
        }
        CertificateError::Revoked => "it is revoked".to_string(),
        CertificateError::BadSignature => "its signature is invalid".to_string(),
        other => other.to_string(),
    };
    format!("certificate verify failed: the certificate of {host} was refused: {why}")
}

/// webpki reports the names a certificate presents in their debug form, `DnsName("db")` or
/// `IpAddress(10.0.0.5)`: the name alone reads better.
fn plain_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map_or(presented, |name| name.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_handshake_error_inside_io_errors() {
        let tls = TlsError::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let wrapped = sqlx::Error::Io(io);
        let found = rustls_error(&wrapped).expect("the rustls error");
        assert!(is_unknown_issuer(found));
        assert_eq!(
            explain(found, "db.example"),
            "certificate verify failed: the certificate of db.example was refused: it is not signed by a trusted certificate authority"
        );
        assert!(rustls_error(&sqlx::Error::PoolTimedOut).is_none());
        assert_eq!(plain_name("DnsName(\"db.internal\")"), "db.internal");
        assert_eq!(plain_name("IpAddress(10.0.0.5)"), "10.0.0.5");
        assert_eq!(plain_name("db"), "db");
    }

    #[test]
    fn a_missing_file_names_its_setting() {
        let missing = Path::new("/nonexistent/backfilld.pem");
        let error = server_config(missing, missing).unwrap_err();
        assert_eq!(error.key, "tls_cert");
        assert!(error.message.contains("cannot read"), "{error}");
    }
}
