//! TLS to Postgres, as the connection string asks, with libpq's meaning of
//! `sslmode` and `sslrootcert` (so the `DATABASE_URL` that works with `psql`
//! works here):
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | if the server offers it | not checked |
//! | `require` | always | not checked |
//! | `verify-ca`, `verify-full` | always | chain to `sslrootcert` (default: the system's trust store) and host name |
//!
//! As in libpq, giving `sslrootcert` with `prefer` or `require` makes the
//! certificate checked too. `verify-ca` checks the host name as `verify-full`
//! does. On AWS: RDS Proxy presents a certificate from a public CA, so
//! `sslmode=verify-full` needs nothing else; a database instance's
//! certificate needs `sslrootcert=` the RDS CA bundle.

use anyhow::{bail, Context};
use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the connection string asked of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TlsSettings {
    mode: SslMode,
    /// Check the server's certificate, and against which roots (None: do
    /// not check it).
    verify: Option<Verify>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verify {
    SystemRoots,
    RootCert(String),
}

/// Parses a Postgres connection string (URL or `key=value` form) into the
/// client's configuration and its TLS connector.
pub fn parse(database_url: &str) -> anyhow::Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let (rest, settings) = split(database_url)?;
    let mut pg: tokio_postgres::Config = rest
        .parse()
        .context("DATABASE_URL is not a valid Postgres connection string")?;
    pg.ssl_mode(settings.mode);
    Ok((pg, connector(&settings)?))
}

/// Takes `sslmode` and `sslrootcert` out of a connection string: the
/// string left (for tokio-postgres, which knows neither `verify-*` nor
/// `sslrootcert`) and what they ask for.
fn split(database_url: &str) -> anyhow::Result<(String, TlsSettings)> {
    let url_form =
        database_url.starts_with("postgres://") || database_url.starts_with("postgresql://");
    let mut mode = None;
    let mut root = None;
    let rest = if url_form {
        let (base, query) = match database_url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (database_url, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                "sslmode" => &mut mode,
                "sslrootcert" => &mut root,
                _ => {
                    kept.push(pair);
                    continue;
                }
            };
            let v = percent_decode_str(v)
                .decode_utf8()
                .with_context(|| format!("DATABASE_URL: {k} is not valid UTF-8"))?;
            *slot = Some(v.into_owned());
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for token in database_url.split_whitespace() {
            match token.split_once('=') {
                Some(("sslmode", v)) => mode = Some(v.trim_matches('\'').to_string()),
                Some(("sslrootcert", v)) => root = Some(v.trim_matches('\'').to_string()),
                _ => kept.push(token),
            }
        }
        kept.join(" ")
    };
    let root = root.filter(|r| !r.is_empty());
    let (mode, verify) = match mode.as_deref().unwrap_or("prefer") {
        "disable" => (SslMode::Disable, None),
        "allow" | "prefer" => (SslMode::Prefer, root.map(Verify::RootCert)),
        "require" => (SslMode::Require, root.map(Verify::RootCert)),
        "verify-ca" | "verify-full" => (
            SslMode::Require,
            Some(root.map(Verify::RootCert).unwrap_or(Verify::SystemRoots)),
        ),
        other => bail!(
            "DATABASE_URL: sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ),
    };
    Ok((rest, TlsSettings { mode, verify }))
}

fn connector(settings: &TlsSettings) -> anyhow::Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match &settings.verify {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
        Some(verify) => builder
            .with_root_certificates(roots(verify)?)
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

fn roots(verify: &Verify) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match verify {
        Verify::RootCert(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("DATABASE_URL: reading sslrootcert {path}"))?
            {
                let cert =
                    cert.with_context(|| format!("DATABASE_URL: sslrootcert {path} is not PEM"))?;
                store
                    .add(cert)
                    .with_context(|| format!("DATABASE_URL: a certificate in {path}"))?;
            }
        }
        Verify::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // One unusable system certificate is no reason to refuse all.
                let _ = store.add(cert);
            }
        }
    }
    if store.is_empty() {
        bail!("DATABASE_URL: no CA certificates to check the server's certificate against");
    }
    Ok(store)
}

/// `prefer` and `require` without `sslrootcert`: the connection is
/// encrypted and the handshake's signatures are checked, but, as libpq
/// does in these modes, not who signed the server's certificate.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> (String, TlsSettings) {
        split(url).unwrap()
    }

    #[test]
    fn libpq_modes_map_to_tls_and_checking() {
        let (rest, s) = settings("postgres://u@h:5432/db");
        assert_eq!(rest, "postgres://u@h:5432/db");
        assert_eq!((s.mode, s.verify), (SslMode::Prefer, None));

        let (rest, s) = settings("postgres://u@h/db?sslmode=disable&application_name=x");
        assert_eq!(rest, "postgres://u@h/db?application_name=x");
        assert_eq!((s.mode, s.verify), (SslMode::Disable, None));

        let (_, s) = settings("postgres://u@h/db?sslmode=require");
        assert_eq!((s.mode, s.verify), (SslMode::Require, None));

        let (rest, s) = settings("postgres://u@h/db?sslmode=verify-full");
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!(
            (s.mode, s.verify),
            (SslMode::Require, Some(Verify::SystemRoots))
        );

        let (rest, s) =
            settings("postgresql://u@h/db?sslrootcert=%2Fopt%2Frds%20ca.pem&sslmode=verify-ca");
        assert_eq!(rest, "postgresql://u@h/db");
        assert_eq!(
            (s.mode, s.verify),
            (
                SslMode::Require,
                Some(Verify::RootCert("/opt/rds ca.pem".into()))
            )
        );

        // As in libpq, a root certificate makes `require` check the server.
        let (_, s) = settings("host=h user=u sslmode=require sslrootcert=/ca.pem");
        assert_eq!(
            (s.mode, s.verify),
            (SslMode::Require, Some(Verify::RootCert("/ca.pem".into())))
        );
        let (rest, s) = settings("host=h user=u sslmode=disable");
        assert_eq!(rest, "host=h user=u");
        assert_eq!(s.mode, SslMode::Disable);
    }

    #[test]
    fn unknown_modes_and_missing_root_files_are_refused() {
        let e = split("postgres://u@h/db?sslmode=verify").unwrap_err();
        assert!(e.to_string().contains("sslmode=verify"), "{e}");
        let e = parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"), "{e:#}");
    }
}
