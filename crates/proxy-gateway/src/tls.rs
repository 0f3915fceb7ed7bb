//! TLS on the data plane (rustls on ring): ALPN offers `h2` and `http/1.1`, TLS 1.2
//! and 1.3 with rustls' safe defaults. The certificate and key are PEM files, watched:
//! a renewed certificate (cert-manager, certbot) is served to new connections without
//! a restart, and a broken one is refused with the reason while the old one keeps
//! serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// `[proxy-gateway.tls]`: when present, `listen.http` speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Largest certificate or key file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|error| format!("{}: {error}", path.display()))?
        .len();
    if size > MAX_PEM_BYTES {
        return Err(format!(
            "{}: larger than {MAX_PEM_BYTES} bytes",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))
}

/// Loads and checks a certificate chain and its key.
///
/// # Errors
/// Unreadable files, no certificate, no or an unsupported key, or a key that does not
/// match the certificate.
pub fn load(config: &TlsConfig) -> Result<CertifiedKey, String> {
    let chain = read(&config.cert_file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{}: {error}", config.cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in it",
            config.cert_file.display()
        ));
    }
    let key = read(&config.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|error| format!("{}: {error}", config.key_file.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|error| format!("{}: {error}", config.key_file.display()))?;
    Ok(certified)
}

/// The certificate served now; swapped when the files change.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The data plane's TLS acceptor, following its certificate files until `stop`.
///
/// # Errors
/// When the certificate or key cannot be used now, or the files cannot be watched.
pub fn acceptor(
    config: &TlsConfig,
    stop: tokio_util::sync::CancellationToken,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certificates = Arc::new(Certificates {
        current: ArcSwap::from_pointee(load(config)?),
    });
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| error.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(Arc::clone(&certificates) as Arc<dyn ResolvesServerCert>);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let mut watches = Vec::new();
    for path in [&config.cert_file, &config.key_file] {
        watches.push(
            crate::filewatch::FileWatch::new(path)
                .map_err(|error| format!("watching {}: {error}", path.display()))?,
        );
    }
    let config = config.clone();
    tokio::spawn(async move {
        loop {
            let changes = futures::future::select_all(
                watches.iter_mut().map(|watch| Box::pin(watch.changed())),
            );
            tokio::select! {
                (changed, _, _) = changes => if changed.is_none() { return },
                () = stop.cancelled() => return,
            }
            match load(&config) {
                Ok(certified) => {
                    certificates.current.store(Arc::new(certified));
                    tracing::info!(cert = %config.cert_file.display(), "TLS certificate reloaded");
                }
                Err(reason) => tracing::warn!(
                    %reason,
                    "TLS certificate refused; the previous one keeps serving"
                ),
            }
        }
    });
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsConfig {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let config = TlsConfig {
            cert_file: dir.join(format!("{name}.crt")),
            key_file: dir.join(format!("{name}.key")),
        };
        std::fs::write(&config.cert_file, certified.cert.pem()).unwrap();
        std::fs::write(&config.key_file, certified.signing_key.serialize_pem()).unwrap();
        config
    }

    #[test]
    fn a_matching_pair_loads_and_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = write_pair(dir.path(), "one");
        let two = write_pair(dir.path(), "two");
        assert!(load(&one).is_ok());
        let crossed = TlsConfig {
            cert_file: one.cert_file.clone(),
            key_file: two.key_file.clone(),
        };
        assert!(load(&crossed).is_err(), "a key of another certificate");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all").unwrap();
        let error = load(&TlsConfig {
            cert_file: empty.clone(),
            key_file: one.key_file.clone(),
        })
        .unwrap_err();
        assert!(error.contains("no PEM certificate"), "{error}");
        let error = load(&TlsConfig {
            cert_file: one.cert_file.clone(),
            key_file: empty,
        })
        .unwrap_err();
        assert!(error.contains("empty.pem"), "{error}");
        let error = load(&TlsConfig {
            cert_file: dir.path().join("missing.crt"),
            key_file: one.key_file,
        })
        .unwrap_err();
        assert!(error.contains("missing.crt"), "{error}");
    }
}
