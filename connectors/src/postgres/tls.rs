//! TLS to PostgreSQL with libpq's connection parameters.
//!
//! tokio-postgres understands `sslmode` disable | prefer | require only; the
//! url parameters that decide what a certificate must prove — `sslmode`
//! verify-ca | verify-full, `sslrootcert`, `sslcert`, `sslkey` — are taken
//! out of the url here and turned into a rustls configuration:
//!
//! | sslmode | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `allow`, `prefer` (default) | when the server offers TLS | no |
//! | `require` | yes | no; against `sslrootcert` when given (as libpq) |
//! | `verify-ca` | yes | chain to `sslrootcert` |
//! | `verify-full` | yes | chain to `sslrootcert`, and the host name |
//!
//! `sslrootcert` defaults to `~/.postgresql/root.crt` for the verify modes;
//! `sslrootcert=system` trusts the operating system's certificate store.
//! `sslcert` + `sslkey` present a client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the server's certificate must prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Nothing: encryption only (libpq's prefer and require).
    Nothing,
    /// A chain to a trusted root.
    Chain,
    /// A chain to a trusted root, issued for the host connected to.
    ChainAndName,
}

/// The TLS part of a connection url.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsParams {
    /// Takes the TLS parameters out of a `postgresql://` url's query, and
    /// returns the url without them. Other connection strings (`key=value`)
    /// are returned as they are: tokio-postgres reads their `sslmode`.
    pub(crate) fn split(url: &str) -> (String, TlsParams) {
        let mut params = TlsParams::default();
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
            return (url.to_string(), params);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned();
            match key {
                "sslmode" => params.mode = Some(value),
                "sslrootcert" => params.root_cert = Some(value),
                "sslcert" => params.cert = Some(value),
                "sslkey" => params.key = Some(value),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, params)
    }

    /// The `sslmode` tokio-postgres negotiates with, given the one it read
    /// itself (for connection strings that are not urls).
    pub(crate) fn ssl_mode(&self, parsed: SslMode) -> Result<SslMode, String> {
        Ok(match self.mode.as_deref() {
            None => parsed,
            Some("disable") => SslMode::Disable,
            Some("allow" | "prefer") => SslMode::Prefer,
            Some("require" | "verify-ca" | "verify-full") => SslMode::Require,
            Some(other) => {
                return Err(format!(
                    "invalid url: sslmode={other}: expected one of {}",
                    "disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    fn verify(&self) -> Verify {
        match self.mode.as_deref() {
            Some("verify-full") => Verify::ChainAndName,
            Some("verify-ca") => Verify::Chain,
            Some("require") if self.root_cert.is_some() => Verify::Chain,
            _ => Verify::Nothing,
        }
    }

    /// The TLS connector for these parameters; reads the certificate files.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let verify = self.verify();
        let builder = if verify == Verify::Nothing {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier::new(None, provider)))
        } else {
            let roots = Arc::new(self.roots()?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?;
            if verify == Verify::ChainAndName {
                builder.with_webpki_verifier(webpki)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Verifier::new(
                        Some(webpki),
                        provider,
                    )))
            }
        };
        let config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("sslcert {cert}: {e}"))?;
                let key =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| format!("sslkey {key}: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            _ => return Err("sslcert and sslkey go together: give both or neither".into()),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// The trusted roots: `sslrootcert`, the system store for
    /// `sslrootcert=system`, else libpq's `~/.postgresql/root.crt`.
    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        if self.root_cert.as_deref() == Some("system") {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("sslrootcert=system: no certificates in the system store".into());
            }
            return Ok(roots);
        }
        let path = match &self.root_cert {
            Some(path) => PathBuf::from(path),
            None => default_root_cert().ok_or(
                "sslmode verify-ca/verify-full needs sslrootcert (a PEM file, or \"system\")",
            )?,
        };
        let certs = CertificateDer::pem_file_iter(&path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
        roots.add_parsable_certificates(certs);
        if roots.is_empty() {
            return Err(format!(
                "sslrootcert {}: no certificate in it",
                path.display()
            ));
        }
        Ok(roots)
    }
}

/// libpq's default root certificate file, when it exists.
fn default_root_cert() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".postgresql/root.crt");
    path.exists().then_some(path)
}

/// Checks the handshake signatures always, the chain when given roots, and
/// never the host name.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    fn new(chain: Option<Arc<WebPkiServerVerifier>>, provider: Arc<CryptoProvider>) -> Self {
        Verifier { chain, provider }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a connection failed because TLS was refused or a certificate
/// rejected — a permanent failure, unlike a dropped connection.
pub(crate) fn rejected(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|e| e as &(dyn std::error::Error + 'static));
        if cause.is::<rustls::Error>()
            || inner.is_some_and(|e| e.is::<rustls::Error>())
            || cause.to_string() == "server does not support TLS"
        {
            return true;
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_tls_parameters_off_the_url() {
        let (rest, tls) = TlsParams::split(
            "postgresql://u@h:5/db?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
        );
        assert_eq!(rest, "postgresql://u@h:5/db?connect_timeout=3");
        assert_eq!(tls.mode.as_deref(), Some("verify-full"));
        assert_eq!(tls.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(tls.verify(), Verify::ChainAndName);
        assert_eq!(tls.ssl_mode(SslMode::Prefer), Ok(SslMode::Require));

        let (rest, tls) = TlsParams::split("postgresql://u@h/db?sslmode=require");
        assert_eq!(rest, "postgresql://u@h/db");
        assert_eq!(tls.verify(), Verify::Nothing);

        let (rest, tls) = TlsParams::split("host=h sslmode=require");
        assert_eq!(rest, "host=h sslmode=require");
        assert_eq!(tls, TlsParams::default());
        assert_eq!(tls.ssl_mode(SslMode::Require), Ok(SslMode::Require));
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain() {
        let (_, tls) = TlsParams::split("postgresql://h/db?sslmode=require&sslrootcert=/ca.pem");
        assert_eq!(tls.verify(), Verify::Chain);
        let err = tls.connector().err().unwrap();
        assert!(err.starts_with("sslrootcert /ca.pem:"), "{err}");
    }

    #[test]
    fn bad_parameters_are_clear_errors() {
        let (_, tls) = TlsParams::split("postgresql://h/db?sslmode=sometimes");
        let err = tls.ssl_mode(SslMode::Prefer).unwrap_err();
        assert!(err.contains("sslmode=sometimes"), "{err}");
        let (_, tls) = TlsParams::split("postgresql://h/db?sslcert=/c.pem");
        let err = tls.connector().err().unwrap();
        assert!(err.contains("give both"), "{err}");
    }
}
