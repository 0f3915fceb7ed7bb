//! core-engine: encryption as a service with versioned keys, statistics and parallel
//! compute kernels, served as `omnimesh.engine.v1.Engine`.
//!
//! Start reading at [`App`]: [`App::build`] assembles the service from a [`Config`],
//! [`App::serve`] serves it on a listener the caller bound (tests bind `127.0.0.1:0`).
//! `transport` holds the tonic service; `keys` the keyring (rules in `keys::model`,
//! persistence in `keys::store`, the master key in `keys::master`); `crypto` the
//! primitives and the `omnimesh:v<N>:` envelope; `analyze` and `compute` the statistics
//! and kernels, run on a rayon pool of their own; `report` sends every key change to
//! mesh-controller's event store from the key store's outbox.

mod analyze;
mod compute;
mod config;
mod crypto;
mod error;
mod keys;
mod metrics;
mod report;
mod sort;
mod transport;

use std::future::Future;
use std::sync::Arc;

use omnimesh_common::server::GrpcServer;
use omnimesh_proto::engine::v1::engine_server::EngineServer;
use omnimesh_telemetry::Metrics;
use tokio::net::TcpListener;

pub use config::{AuditConfig, ComputeConfig, Config, KeysConfig, LimitsConfig};
pub use error::{EngineError, Error};

/// The service name used in config sections, metrics and logs.
pub const SERVICE: &str = "core-engine";

/// core-engine, assembled and ready to serve.
pub struct App {
    server: GrpcServer,
    keyring: Arc<keys::Keyring>,
    seal_flush_interval: std::time::Duration,
    auto_rotate_check_interval: std::time::Duration,
    reporter: Option<report::Reporter>,
}

impl App {
    /// Assembles the service described by `config`.
    ///
    /// # Errors
    /// When the master key, the key store or the gRPC server cannot be set up.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let mut metrics = Metrics::new(SERVICE, env!("CARGO_PKG_VERSION"));
        let engine_metrics = metrics::EngineMetrics::register(metrics.registry_mut());
        let rng = ring::rand::SystemRandom::new();
        let env_value = (!config.keys.master_key_env.is_empty())
            .then(|| std::env::var(&config.keys.master_key_env).ok())
            .flatten();
        let master = keys::master::MasterKey::load(
            env_value.as_deref(),
            &config.keys.master_key_file,
            config.keys.generate_master_key,
            &rng,
        )
        .map_err(Error::MasterKey)?;
        let previous_masters = if config.keys.previous_master_keys_file.as_os_str().is_empty() {
            Vec::new()
        } else {
            keys::master::MasterKey::load_previous(&config.keys.previous_master_keys_file, &master)
                .map_err(|reason| {
                    Error::MasterKey(format!("keys.previous_master_keys_file {reason}"))
                })?
        };
        let store =
            keys::store::KeyStore::open(&config.keys.database_url, config.keys.max_connections)
                .await?;
        let mut keyring = keys::Keyring::new(
            store.clone(),
            master,
            keys::KeyringLimits {
                cache_versions: config.keys.cache_versions,
                metadata_ttl: config.keys.metadata_ttl,
                max_seals_per_version: config.keys.max_seals_per_version,
            },
        )
        .with_previous_masters(previous_masters, config.keys.rewrap_to_master_key)
        .with_metrics(engine_metrics.clone());
        // A master key rotation: what the retired keys wrap moves under the new one.
        let rewrapped = keyring
            .rewrap_retired()
            .await
            .map_err(|error| Error::MasterKey(error.to_string()))?;
        if rewrapped > 0 {
            tracing::info!(
                rewrapped,
                master_key = keyring.master_key_id(),
                "rewrapped key versions under the master key"
            );
        }
        let audit = &config.audit;
        let reporter = if audit.controller.is_empty() {
            None
        } else {
            let wake = Arc::new(tokio::sync::Notify::new());
            keyring = keyring.with_journal(Arc::clone(&wake));
            let options = report::ReportOptions {
                controller: audit.controller.clone(),
                issuer: omnimesh_common::auth::Issuer::load(
                    &omnimesh_common::reporting::auth_config(
                        audit.key_file.clone(),
                        audit.generate_key,
                    ),
                )
                .map_err(|error| Error::Audit(error.to_string()))?,
                timeout: audit.timeout,
                retry_initial: audit.retry_initial,
                retry_max: audit.retry_max,
                recheck_interval: audit.recheck_interval,
            };
            Some(
                report::Reporter::start(store, options, wake, engine_metrics)
                    .map_err(|error| Error::Audit(error.to_string()))?,
            )
        };
        let keyring = Arc::new(keyring);
        let pool = Arc::new(compute::ComputePool::new(config.compute.threads)?);
        let service =
            transport::EngineService::new(Arc::clone(&keyring), config.limits.clone(), pool);
        let server = GrpcServer::builder(SERVICE, &config.server)
            .message_limit_key("limits.max_message_bytes")
            .add_service(
                EngineServer::new(service)
                    .max_decoding_message_size(config.limits.max_message_bytes)
                    .max_encoding_message_size(config.limits.max_message_bytes.saturating_mul(2)),
            )
            .descriptor_set(omnimesh_proto::FILE_DESCRIPTOR_SET)
            .reflection(true)
            .admin_http(metrics)
            .build()?;
        Ok(Self {
            server,
            keyring,
            seal_flush_interval: config.keys.seal_flush_interval,
            auto_rotate_check_interval: config.keys.auto_rotate_check_interval,
            reporter,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then drains in-flight calls.
    ///
    /// # Errors
    /// When the server fails while serving.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let keyring = Arc::clone(&self.keyring);
        let flusher = every(self.seal_flush_interval, move || {
            let keyring = Arc::clone(&keyring);
            async move { keyring.flush_seals().await }
        });
        // Keys with an auto_rotate_period are rotated when due (each replica checks; the
        // store lets one rotation per period through).
        let keyring = Arc::clone(&self.keyring);
        let rotator = every(self.auto_rotate_check_interval, move || {
            let keyring = Arc::clone(&keyring);
            async move {
                if let Err(error) = keyring.rotate_due(keys::now_ms()).await {
                    tracing::warn!(%error, "looking for keys due for rotation failed");
                }
            }
        });
        let served = self.server.serve(listener, shutdown).await;
        flusher.abort();
        rotator.abort();
        // Seal counts made during the drain are kept; unreported key changes wait in the
        // store for the next start.
        self.keyring.flush_seals().await;
        drop(self.reporter);
        Ok(served?)
    }
}

/// Runs `work` every `interval` (a slow round delays the next) until the task is aborted.
fn every<F, Fut>(interval: std::time::Duration, mut work: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            work().await;
        }
    })
}

/// Internals exposed to the benchmarks (`benches/engine.rs`); not an API.
#[doc(hidden)]
pub mod bench_support {
    use ring::rand::SystemRandom;

    use crate::crypto::{self, AeadAlg, AeadKey, chunked, envelope};

    /// An AES-256-GCM key sealing the way Encrypt does (random nonce, version-bound
    /// associated data).
    pub struct Sealer {
        key: AeadKey,
        rng: SystemRandom,
    }

    impl Sealer {
        /// A key of 32 fixed bytes.
        pub fn new() -> Self {
            Self {
                key: AeadKey::new(AeadAlg::Aes256Gcm, &[7; 32]).expect("32 bytes"),
                rng: SystemRandom::new(),
            }
        }

        /// Seals `buffer` in place under a counter nonce, as stream chunks are sealed.
        pub fn seal_in_place(&self, counter: u64, buffer: &mut [u8]) -> [u8; 16] {
            let mut nonce = [0_u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            self.key.seal_in_place(nonce, b"", buffer).expect("sealing")
        }

        /// Seals a batch as Encrypt does: one call to the generator for the nonces, then
        /// each item bound to version 1; the envelopes.
        pub fn seal_batch<P: AsRef<[u8]>>(&self, plaintexts: &[P]) -> Vec<String> {
            let nonces = crypto::nonces(&self.rng, plaintexts.len()).expect("nonces");
            let (mut aad, mut body) = (Vec::new(), Vec::new());
            plaintexts
                .iter()
                .zip(nonces)
                .map(|(plaintext, nonce)| {
                    envelope::aad_into(1, b"", &mut aad);
                    self.key
                        .seal_body_into(nonce, &aad, plaintext.as_ref(), &mut body)
                        .expect("sealing");
                    envelope::format(1, &body)
                })
                .collect()
        }

        /// Opens a batch as Decrypt does: each ciphertext parsed (strict base64) and
        /// opened in the buffer it was decoded into, under its version's associated
        /// data; the plaintext bytes.
        pub fn open_batch(&self, ciphertexts: &[String]) -> usize {
            let mut aad = Vec::new();
            ciphertexts
                .iter()
                .map(|text| {
                    let (version, body) =
                        envelope::parse("ciphertext", text).expect("a ciphertext");
                    envelope::aad_into(version, b"", &mut aad);
                    self.key.open_body(&aad, body).expect("opening").len()
                })
                .sum()
        }

        /// Encrypts a message given in `pieces` as EncryptStream does (chunked
        /// encryption, 16 KiB chunks), handing `each` the header, then each piece's
        /// output, then the end's.
        pub fn encrypt_stream(&self, pieces: &[Vec<u8>], mut each: impl FnMut(Vec<u8>)) {
            let (mut encryptor, header) =
                chunked::Encryptor::new(AeadAlg::Aes256Gcm, &[7; 32], b"bench", &self.rng)
                    .expect("encryptor");
            each(header);
            for piece in pieces {
                each(encryptor.push(piece).expect("sealing"));
            }
            each(encryptor.finish().expect("sealing"));
        }

        /// Decrypts what [`Sealer::encrypt_stream`] returned, piece for piece, as
        /// DecryptStream does; the plaintext's length.
        pub fn decrypt_stream(&self, pieces: &[Vec<u8>]) -> usize {
            let mut decryptor =
                chunked::Decryptor::new(AeadAlg::Aes256Gcm, &[7; 32], b"bench").expect("decryptor");
            let mut opened = 0;
            for piece in pieces {
                opened += decryptor.push(piece).expect("opening").len();
            }
            opened + decryptor.finish().expect("opening").len()
        }

        /// Seals `plaintext` as Encrypt does; the body (nonce, ciphertext, tag).
        pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
            self.key
                .seal(&self.rng, &envelope::aad(1, b""), plaintext)
                .expect("sealing")
        }
    }

    impl Default for Sealer {
        fn default() -> Self {
            Self::new()
        }
    }

    /// Count, mean and sample variance, as Analyze computes them.
    pub fn mean_variance(values: &[f64]) -> (u64, f64, f64) {
        let m = crate::analyze::moments(values);
        (m.count, m.mean, m.variance())
    }

    /// Exact quantiles, as Analyze computes them (large inputs are not copied).
    pub fn quantiles(values: &[f64], qs: &[f64]) -> Vec<f64> {
        crate::analyze::quantiles_of(values, qs)
    }

    /// The f64 sort of Compute: a sorted copy in a new vector.
    pub fn sorted_f64(values: &[f64]) -> Vec<f64> {
        crate::compute::sorted_f64(values, false)
    }

    /// A sorted copy into a given array, as `numpy.sort` makes: `source` into `out` (as
    /// long).
    pub fn sort_f64_into(source: &[f64], out: &mut [f64]) {
        crate::compute::sort_f64_into(source, out);
    }

    /// The GEMM of Compute (square matrices).
    pub fn matmul(a: &[f64], b: &[f64], n: usize, threads: usize) -> Vec<f64> {
        crate::compute::matmul(a, (n, n), b, (n, n), threads).expect("square matrices")
    }
}

/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzz_support {
    use crate::analyze::{self, NonFinite};
    use crate::crypto::{AeadAlg, AeadKey, envelope};

    /// Parses `text` as a ciphertext and tries to open it with a fixed key: never a
    /// panic, and only a generic failure for anything but a real ciphertext.
    pub fn open_ciphertext(text: &str, associated_data: &[u8]) -> bool {
        let Ok((version, body)) = envelope::parse("ciphertext", text) else {
            return false;
        };
        let key = AeadKey::new(AeadAlg::Aes256Gcm, &[1; 32]).expect("32 bytes");
        key.open_body(&envelope::aad(version, associated_data), body)
            .is_ok()
    }

    /// Whether the envelope's SIMD decoding of `encoded` (after a valid prefix) accepts
    /// exactly what the `base64` crate's strict decoding accepts, with the same bytes.
    pub fn base64_decoders_agree(encoded: &str) -> bool {
        use base64::Engine as _;
        let ours = envelope::parse("ciphertext", &format!("omnimesh:v1:{encoded}"));
        let strict = base64::engine::general_purpose::STANDARD.decode(encoded);
        ours.ok().map(|(_, body)| body) == strict.ok()
    }

    /// Feeds arbitrary bytes, in pieces whose sizes come from the input, to the stream
    /// decryptor, after a valid header so the chunk framing is reached: never a panic,
    /// never more than one chunk buffered, never a success.
    pub fn decrypt_stream(data: &[u8]) -> bool {
        use crate::crypto::chunked::{Decryptor, Encryptor};
        let Some((&piece, rest)) = data.split_first() else {
            return false;
        };
        let (_, header) = Encryptor::with_salt(AeadAlg::Aes256Gcm, &[2; 32], b"fuzz", [7; 24])
            .expect("a 32-byte key");
        let Ok(mut decryptor) = Decryptor::new(AeadAlg::Aes256Gcm, &[2; 32], b"fuzz") else {
            return false;
        };
        if decryptor.push(&header).is_err() {
            return false;
        }
        // Pieces of 1 to 40,801 bytes: shorter than a sealed chunk (buffered) and longer
        // (opened straight from the piece).
        for part in rest.chunks(usize::from(piece) * 160 + 1) {
            if decryptor.push(part).is_err() {
                return false;
            }
        }
        decryptor.finish().is_ok()
    }

    /// Parses arbitrary bytes as a list of retired master keys: never a panic; a list
    /// accepted holds distinct keys, none the master key, no more than its lines; a list
    /// refused gets a short message (it names a line, never echoes one). The keys read.
    pub fn previous_master_keys(data: &[u8]) -> Option<usize> {
        use crate::keys::master::MasterKey;
        let current = MasterKey::from_bytes(&[9; 32]).expect("32 bytes");
        match MasterKey::parse_previous(data, &current) {
            Ok(keys) => {
                let mut ids: Vec<&str> = keys.iter().map(MasterKey::id).collect();
                ids.push(current.id());
                ids.sort_unstable();
                ids.dedup();
                assert_eq!(
                    ids.len(),
                    keys.len() + 1,
                    "a key listed twice or the master key"
                );
                assert!(keys.len() <= data.split(|&b| b == b'\n').count());
                Some(keys.len())
            }
            Err(message) => {
                assert!(!message.is_empty() && message.len() < 120, "{message}");
                None
            }
        }
    }

    /// Runs Analyze on values and options decoded from arbitrary bytes.
    pub fn analyze_bytes(data: &[u8]) {
        let Some((&options, rest)) = data.split_first() else {
            return;
        };
        let values: Vec<f64> = rest
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        let policy = match options % 3 {
            0 => NonFinite::DropNan,
            1 => NonFinite::Reject,
            _ => NonFinite::Skip,
        };
        let pick = |i: usize| values.get(i).copied().unwrap_or(0.5);
        let request = analyze::Request {
            quantiles: if options & 4 != 0 {
                vec![pick(0), 0.5]
            } else {
                vec![]
            },
            approx_quantiles: if options & 8 != 0 {
                vec![pick(1)]
            } else {
                vec![]
            },
            edges: if options & 16 != 0 {
                values.iter().take(4).copied().collect()
            } else {
                vec![]
            },
            bins: u32::from(options >> 5) * 1000,
            histogram: options & 32 != 0,
        };
        let _ = analyze::analyze(values, policy, &request);
    }
}
