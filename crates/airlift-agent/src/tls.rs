//! How a device (and the `airlift` CLI) trusts its server over HTTPS:
//! the system's roots by default; the CA certificates given
//! (`--ca-cert`); or a pin, the SHA-256 of one certificate's DER bytes,
//! which a device keeps in its flash settings like its trusted keys. A pin
//! of the server's own certificate accepts exactly that certificate (its
//! name and dates are not checked: the pin is the identity); a pin of a
//! certificate further up the chain the server sends (the lab CA of
//! `airlift keys tls`) makes that certificate the only root, and the
//! server's certificate must chain to it and name the host as usual.
//! Either way the server must prove it holds the certificate's key.
//!
//! A device told to require HTTPS refuses a plain `http://` server before
//! sending anything, with [`plain_http_refused`]'s message.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// What a client trusts, and whether it speaks plain HTTP at all.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Root certificates to trust instead of the system's.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// SHA-256 of a certificate the server must present (or chain to).
    pub pin: Option<[u8; 32]>,
    /// Refuse `http://` servers.
    pub require_https: bool,
}

/// Parses a pin: 64 hex digits, colons allowed (`openssl x509 -fingerprint -sha256`).
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    let mut pin = [0u8; 32];
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a certificate pin: expected the SHA-256 of the certificate, \
             64 hex digits (airlift keys tls prints them)"
        ));
    }
    for (i, byte) in pin.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(pin)
}

/// The certificates of a PEM file (`--ca-cert`).
pub fn read_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no certificate (expected -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// The message of a request refused because the device requires HTTPS.
pub fn plain_http_refused(url: &str) -> Option<String> {
    url.starts_with("http://").then(|| {
        format!(
            "refusing plain HTTP to {url}: this device requires HTTPS (require_https); \
             give it an https:// server"
        )
    })
}

/// The TLS configuration of a client trusting `trust`.
pub fn client_config(trust: &Trust) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if let Some(pin) = trust.pin {
        let pinned = Pinned {
            pin: Ok(pin),
            provider,
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pinned))
            .with_no_client_auth()
    } else if !trust.ca_certs.is_empty() {
        let mut roots = RootCertStore::empty();
        for cert in &trust.ca_certs {
            roots
                .add(cert.clone())
                .map_err(|e| format!("cannot trust that CA certificate: {e}"))?;
        }
        builder
            .with_root_certificates(Arc::new(roots))
            .with_no_client_auth()
    } else {
        use rustls_platform_verifier::BuilderVerifierExt;
        match builder.clone().with_platform_verifier() {
            Ok(builder) => builder.with_no_client_auth(),
            // No system roots (a bare container): plain HTTP still works,
            // and HTTPS says what to do.
            Err(e) => {
                let none = Pinned {
                    pin: Err(format!(
                        "no root certificates to trust ({e}): give a CA (--ca-cert) or a pin \
                         (--tls-pin)"
                    )),
                    provider,
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(none))
                    .with_no_client_auth()
            }
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn hex(bytes: &[u8]) -> String {
    crate::hex(bytes)
}

/// Accepts the server whose certificate, or a certificate it chains to in
/// what the server sends, has the pinned SHA-256 (or none, saying why,
/// when there is nothing to trust).
#[derive(Debug)]
struct Pinned {
    pin: Result<[u8; 32], String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = self.pin.clone().map_err(rustls::Error::General)?;
        let matches = |cert: &CertificateDer<'_>| Sha256::digest(cert.as_ref())[..] == pin;
        if matches(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(anchor) = intermediates.iter().find(|c| matches(c)) else {
            return Err(rustls::Error::General(format!(
                "the server's certificate (SHA-256 {}) is not the pinned one ({}) and does \
                 not chain to it",
                hex(&Sha256::digest(end_entity.as_ref())),
                hex(&pin)
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned certificate: {e}")))?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_64_hex_digits_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(parse_pin("abcd").unwrap_err().contains("64 hex digits"));
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn only_plain_http_is_refused_when_https_is_required() {
        assert!(
            plain_http_refused("http://a/x")
                .unwrap()
                .contains("requires HTTPS")
        );
        assert_eq!(plain_http_refused("https://a/x"), None);
    }
}
