//! HTTPS: the server's rustls configuration (aws-lc-rs provider, TLS 1.2 and
//! 1.3, HTTP/1.1 over ALPN) from a PEM certificate chain and key, and the
//! lab pair `airlift keys tls` makes: a CA of its own and a server
//! certificate it signed, for the names given.
//!
//! Clients trust a server by its CA (`--ca-cert`), or pin a certificate:
//! the SHA-256 of its DER bytes ([`cert_sha256`]), of the server's own
//! certificate or of any certificate in the chain it sends (the lab CA is
//! sent along for that). A device keeps that pin in its flash settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why HTTPS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate and key.
    #[error("the certificate and key cannot be used together: {0}")]
    Rustls(#[from] rustls::Error),
    /// The lab pair could not be made.
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The cryptography every TLS configuration of Airlift uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM file, in order.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(error(
            "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// The server's TLS configuration from a PEM chain (its certificate first)
/// and the PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.to_owned(),
        message: format!("not a PEM private key: {e}"),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Lowercase hex SHA-256 of a certificate's DER bytes: what a client pins.
pub fn cert_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A lab CA and a server certificate it signed.
pub struct LabPair {
    /// The CA's certificate (PEM): what clients trust with `--ca-cert`.
    pub ca_pem: String,
    /// The server's certificate followed by the CA's (PEM): `--tls-cert`.
    pub chain_pem: String,
    /// The server's private key (PEM): `--tls-key`.
    pub key_pem: String,
    /// SHA-256 of the CA's certificate (a pin that survives a new server certificate).
    pub ca_sha256: String,
    /// SHA-256 of the server's certificate.
    pub cert_sha256: String,
}

impl std::fmt::Debug for LabPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabPair")
            .field("ca_sha256", &self.ca_sha256)
            .field("cert_sha256", &self.cert_sha256)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Makes a CA (ECDSA P-256) and a server certificate for `names` (DNS
/// names or IP addresses) signed by it.
pub fn lab_pair(names: &[String]) -> Result<LabPair, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "Airlift lab CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("airlift", String::as_str),
    );
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok(LabPair {
        ca_pem: ca_cert.pem(),
        chain_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key_pem: leaf_key.serialize_pem(),
        ca_sha256: cert_sha256(ca_cert.der()),
        cert_sha256: cert_sha256(leaf_cert.der()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_pair_loads_as_a_server_configuration() {
        let pair = lab_pair(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, &pair.chain_pem).unwrap();
        std::fs::write(&key, &pair.key_pem).unwrap();
        server_config(&cert, &key).unwrap();
        let chain = read_certs(&cert).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(cert_sha256(&chain[0]), pair.cert_sha256);
        assert_eq!(cert_sha256(&chain[1]), pair.ca_sha256);
        assert!(!format!("{pair:?}").contains("PRIVATE"));
    }

    #[test]
    fn unusable_files_are_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let err = server_config(&empty, &empty).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no certificate"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = server_config(&missing, &missing).unwrap_err().to_string();
        assert!(
            err.contains("missing.pem") && err.contains("cannot read"),
            "{err}"
        );
    }
}
