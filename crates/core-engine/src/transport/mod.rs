//! The tonic implementation of `omnimesh.engine.v1.Engine`: request checks, limits and
//! the mapping between proto messages and the keyring, crypto, analyze and compute
//! modules; `stream` the chunked EncryptStream and DecryptStream.

mod convert;
mod data;
mod kernels;
mod stream;

use std::sync::Arc;

use omnimesh_proto::engine::v1 as pb;
use pb::engine_server::Engine;
use tonic::{Request, Response, Status};

use crate::config::LimitsConfig;
use crate::error::EngineError;
use crate::keys::Keyring;

/// Largest ListKeys page.
const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

/// `omnimesh.engine.v1.Engine`.
#[derive(Debug, Clone)]
pub(crate) struct EngineService {
    keyring: Arc<Keyring>,
    limits: Arc<LimitsConfig>,
    pool: Arc<crate::compute::ComputePool>,
}

impl EngineService {
    pub(crate) fn new(
        keyring: Arc<Keyring>,
        limits: LimitsConfig,
        pool: Arc<crate::compute::ComputePool>,
    ) -> Self {
        Self {
            keyring,
            limits: Arc::new(limits),
            pool,
        }
    }

    fn check_batch(&self, items: usize) -> Result<(), EngineError> {
        if items > self.limits.max_batch_items {
            return Err(EngineError::ResourceExhausted {
                limit: "limits.max_batch_items",
                max: self.limits.max_batch_items as u64,
                got: items as u64,
            });
        }
        Ok(())
    }

    async fn key_response(&self, meta: &crate::keys::model::KeyMeta) -> Result<pb::Key, Status> {
        let seals = self.keyring.seal_counts(&meta.name).await?;
        Ok(convert::key(meta, &seals, crate::keys::now_ms()))
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Engine for EngineService {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Reply<pb::CreateKeyResponse> {
        let request = request.into_inner();
        let key_type = convert::key_type(request.r#type)?;
        let update = request
            .config
            .map(|config| convert::create_config(&config))
            .unwrap_or_default();
        let meta = self
            .keyring
            .create(&request.name, key_type, request.derived, update)
            .await?;
        self.keyring.metrics().operation("create", key_type, 1);
        let key = self.key_response(&meta).await?;
        Ok(Response::new(pb::CreateKeyResponse { key: Some(key) }))
    }

    async fn get_key(&self, request: Request<pb::GetKeyRequest>) -> Reply<pb::GetKeyResponse> {
        let name = request.into_inner().name;
        crate::keys::model::validate_name("name", &name)?;
        let meta = self.keyring.get(&name).await?;
        let key = self.key_response(&meta).await?;
        Ok(Response::new(pb::GetKeyResponse { key: Some(key) }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Reply<pb::ListKeysResponse> {
        let request = request.into_inner();
        let size = match request.page_size {
            0 => DEFAULT_PAGE,
            size => size.min(MAX_PAGE),
        };
        let after = convert::page_token(&request.page_token)?;
        let metas = self.keyring.list(&after, size + 1).await?;
        let more = metas.len() > size as usize;
        let mut keys = Vec::with_capacity(metas.len());
        for meta in metas.iter().take(size as usize) {
            keys.push(self.key_response(meta).await?);
        }
        let next_page_token = if more {
            keys.last()
                .map(|key| convert::next_page_token(&key.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListKeysResponse {
            keys,
            next_page_token,
        }))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Reply<pb::RotateKeyResponse> {
        let meta = self.keyring.rotate(&request.into_inner().name).await?;
        self.keyring.metrics().operation("rotate", meta.key_type, 1);
        let key = self.key_response(&meta).await?;
        Ok(Response::new(pb::RotateKeyResponse { key: Some(key) }))
    }

    async fn update_key_config(
        &self,
        request: Request<pb::UpdateKeyConfigRequest>,
    ) -> Reply<pb::UpdateKeyConfigResponse> {
        let request = request.into_inner();
        let update = request
            .config
            .map(|config| convert::config_update(&config))
            .unwrap_or_default();
        let meta = self.keyring.update(&request.name, update).await?;
        let key = self.key_response(&meta).await?;
        Ok(Response::new(pb::UpdateKeyConfigResponse {
            key: Some(key),
        }))
    }

    async fn trim_key(&self, request: Request<pb::TrimKeyRequest>) -> Reply<pb::TrimKeyResponse> {
        let request = request.into_inner();
        let meta = self
            .keyring
            .trim(&request.name, request.min_available_version)
            .await?;
        let key = self.key_response(&meta).await?;
        Ok(Response::new(pb::TrimKeyResponse { key: Some(key) }))
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Reply<pb::DeleteKeyResponse> {
        self.keyring.delete(&request.into_inner().name).await?;
        Ok(Response::new(pb::DeleteKeyResponse {}))
    }

    async fn encrypt(&self, request: Request<pb::EncryptRequest>) -> Reply<pb::EncryptResponse> {
        let request = request.into_inner();
        self.check_batch(request.items.len())?;
        let results = data::encrypt(&self.keyring, request).await?;
        Ok(Response::new(pb::EncryptResponse { results }))
    }

    async fn decrypt(&self, request: Request<pb::DecryptRequest>) -> Reply<pb::DecryptResponse> {
        let request = request.into_inner();
        self.check_batch(request.items.len())?;
        let results = data::decrypt(&self.keyring, request).await?;
        Ok(Response::new(pb::DecryptResponse { results }))
    }

    async fn rewrap(&self, request: Request<pb::RewrapRequest>) -> Reply<pb::RewrapResponse> {
        let request = request.into_inner();
        self.check_batch(request.items.len())?;
        let results = data::rewrap(&self.keyring, request).await?;
        Ok(Response::new(pb::RewrapResponse { results }))
    }

    async fn generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Reply<pb::GenerateDataKeyResponse> {
        Ok(Response::new(
            data::generate_data_key(&self.keyring, request.into_inner()).await?,
        ))
    }

    async fn sign(&self, request: Request<pb::SignRequest>) -> Reply<pb::SignResponse> {
        let request = request.into_inner();
        self.check_batch(request.items.len())?;
        let results = data::sign(&self.keyring, request).await?;
        Ok(Response::new(pb::SignResponse { results }))
    }

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Reply<pb::VerifyResponse> {
        let request = request.into_inner();
        self.check_batch(request.items.len())?;
        let results = data::verify(&self.keyring, request).await?;
        Ok(Response::new(pb::VerifyResponse { results }))
    }

    async fn hmac(&self, request: Request<pb::HmacRequest>) -> Reply<pb::HmacResponse> {
        let request = request.into_inner();
        self.check_batch(request.items.len())?;
        let results = data::hmac(&self.keyring, request).await?;
        Ok(Response::new(pb::HmacResponse { results }))
    }

    async fn verify_hmac(
        &self,
        request: Request<pb::VerifyHmacRequest>,
    ) -> Reply<pb::VerifyHmacResponse> {
        let request = request.into_inner();
        self.check_batch(request.items.len())?;
        let results = data::verify_hmac(&self.keyring, request).await?;
        Ok(Response::new(pb::VerifyHmacResponse { results }))
    }

    async fn hash(&self, request: Request<pb::HashRequest>) -> Reply<pb::HashResponse> {
        let request = request.into_inner();
        self.check_batch(request.inputs.len())?;
        let algorithm = convert::hash_algorithm(request.algorithm)?;
        let digests = request
            .inputs
            .iter()
            .map(|input| crate::crypto::hash(algorithm, input))
            .collect();
        Ok(Response::new(pb::HashResponse { digests }))
    }

    async fn random_bytes(
        &self,
        request: Request<pb::RandomBytesRequest>,
    ) -> Reply<pb::RandomBytesResponse> {
        let length = request.into_inner().length as usize;
        if length == 0 {
            return Err(EngineError::invalid("length", "must be at least 1").into());
        }
        if length > self.limits.max_random_bytes {
            return Err(EngineError::ResourceExhausted {
                limit: "limits.max_random_bytes",
                max: self.limits.max_random_bytes as u64,
                got: length as u64,
            }
            .into());
        }
        let bytes = crate::crypto::random(self.keyring.rng(), length)?;
        Ok(Response::new(pb::RandomBytesResponse {
            bytes: bytes.to_vec(),
        }))
    }

    async fn analyze(&self, request: Request<pb::AnalyzeRequest>) -> Reply<pb::AnalyzeResponse> {
        Ok(Response::new(
            kernels::analyze(&self.pool, request.into_inner()).await?,
        ))
    }

    async fn analyze_stream(
        &self,
        request: Request<tonic::Streaming<pb::AnalyzeRequest>>,
    ) -> Reply<pb::AnalyzeResponse> {
        Ok(Response::new(
            kernels::analyze_stream(
                &self.pool,
                self.limits.max_stream_values,
                request.into_inner(),
            )
            .await?,
        ))
    }

    async fn compute(&self, request: Request<pb::ComputeRequest>) -> Reply<pb::ComputeResponse> {
        Ok(Response::new(
            kernels::compute(&self.pool, request.into_inner()).await?,
        ))
    }

    async fn encrypt_stream(
        &self,
        request: Request<tonic::Streaming<pb::StreamChunk>>,
    ) -> Reply<tonic::codegen::BoxStream<pb::StreamChunk>> {
        Ok(Response::new(
            stream::encrypt(
                &self.keyring,
                self.limits.max_stream_bytes,
                request.into_inner(),
            )
            .await?,
        ))
    }

    async fn decrypt_stream(
        &self,
        request: Request<tonic::Streaming<pb::StreamChunk>>,
    ) -> Reply<tonic::codegen::BoxStream<pb::StreamChunk>> {
        Ok(Response::new(
            stream::decrypt(
                &self.keyring,
                self.limits.max_stream_bytes,
                request.into_inner(),
            )
            .await?,
        ))
    }

    async fn echo(&self, request: Request<pb::EchoRequest>) -> Reply<pb::EchoResponse> {
        Ok(Response::new(pb::EchoResponse {
            payload: request.into_inner().payload,
        }))
    }

    async fn describe_ciphertext(
        &self,
        request: Request<pb::DescribeCiphertextRequest>,
    ) -> Reply<pb::DescribeCiphertextResponse> {
        Ok(Response::new(
            data::describe(&self.keyring, request.into_inner()).await?,
        ))
    }
}
