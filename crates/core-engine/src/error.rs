//! The crate's errors: why it cannot start ([`Error`]), and why one request or one batch
//! item fails ([`EngineError`], mapped onto gRPC status codes).

/// Why core-engine cannot start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC server failed to build or to serve.
    #[error(transparent)]
    Server(#[from] omnimesh_common::server::Error),
    /// The master key could not be loaded or created.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The key store could not be opened or migrated.
    #[error("key store: {0}")]
    Store(#[from] sqlx::Error),
    /// The key store's migrations failed.
    #[error("key store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The compute pool could not be built.
    #[error("compute pool: {0}")]
    Pool(String),
    /// Key changes cannot be reported (`[core-engine.audit]`): the token key or the
    /// controller's address.
    #[error("audit: {0}")]
    Audit(String),
}

/// Why a request, or one item of a batch, failed. Every variant maps to one gRPC code;
/// messages name the field or limit and never carry secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A field is malformed.
    #[error("invalid `{field}`: {reason}")]
    InvalidArgument {
        /// The field, as named in the proto (`items[3].plaintext`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configured limit was exceeded.
    #[error("`{limit}` is {max}; got {got}")]
    ResourceExhausted {
        /// The configuration key of the limit.
        limit: &'static str,
        /// The limit.
        max: u64,
        /// What was asked for.
        got: u64,
    },
    /// No key of that name.
    #[error("key `{0}` not found")]
    NotFound(String),
    /// A key of that name exists.
    #[error("key `{0}` already exists")]
    AlreadyExists(String),
    /// The key's state forbids the operation (version below a minimum, deletion not
    /// allowed, wrong key type).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Tampering, a wrong key, wrong associated data or a malformed ciphertext: one
    /// answer for all, so it reveals nothing.
    #[error("decryption failed")]
    DecryptionFailed,
    /// A concurrent change won; the caller may retry.
    #[error("{0}")]
    Aborted(String),
    /// The store or the random source failed; details are logged, not returned.
    #[error("internal error")]
    Internal,
}

impl EngineError {
    /// `INVALID_ARGUMENT` for `field`.
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The gRPC code.
    pub(crate) fn code(&self) -> tonic::Code {
        match self {
            EngineError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            EngineError::ResourceExhausted { .. } => tonic::Code::ResourceExhausted,
            EngineError::NotFound(_) => tonic::Code::NotFound,
            EngineError::AlreadyExists(_) => tonic::Code::AlreadyExists,
            EngineError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            EngineError::DecryptionFailed => tonic::Code::InvalidArgument,
            EngineError::Aborted(_) => tonic::Code::Aborted,
            EngineError::Internal => tonic::Code::Internal,
        }
    }

    /// Logs a store failure and hides it behind `Internal`.
    pub(crate) fn store(error: &sqlx::Error) -> Self {
        tracing::error!(%error, "key store failure");
        Self::Internal
    }
}

impl From<EngineError> for tonic::Status {
    fn from(error: EngineError) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}
