//! What every use case gets: configuration, the database pool, the blob
//! store and the clock. Built once per process (per Lambda instance) and
//! shared by reference.

use crate::blob::{
    s3_client, BlobError, BlobMeta, BlobReader, BlobStore, LocalBlobStore, PutOptions, S3BlobStore,
};
use crate::clock::{Clock, SystemClock};
use crate::config::{BlobBackend, Config};
use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::time::Duration;

pub struct AppContext {
    pub config: Config,
    pub pool: Pool,
    pub clock: Arc<dyn Clock>,
    pub blobs: Arc<dyn BlobStore>,
    /// The checkpoint signer, built on first use by
    /// `ledger::seal::checkpoint_signer` (it may read or create a key file).
    pub checkpoint_signer: tokio::sync::OnceCell<Arc<crate::ledger::checkpoint::CheckpointSigner>>,
    /// The message delivery queue (`crate::messages::message_queue`): the
    /// Postgres queue locally, SQS (client built on first use) in AWS.
    pub message_queue: Arc<dyn crate::queue::Queue>,
}

impl AppContext {
    /// Builds the context without any I/O: the pool connects lazily, and so
    /// does the blob store (see [`blob_store_lazy`]).
    pub fn new(config: Config) -> anyhow::Result<Arc<AppContext>> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<AppContext>> {
        let blobs = blob_store_lazy(&config.blob);
        Self::with_blobs(config, clock, blobs)
    }

    /// With a blob store built elsewhere (tests pointing S3 at an emulator
    /// without touching the process environment).
    pub fn with_blobs(
        config: Config,
        clock: Arc<dyn Clock>,
        blobs: Arc<dyn BlobStore>,
    ) -> anyhow::Result<Arc<AppContext>> {
        let pool = crate::db::pool(&config.database_url, config.db_pool_size)?;
        let message_queue = crate::messages::message_queue(&config, &pool);
        Ok(Arc::new(AppContext {
            config,
            pool,
            clock,
            blobs,
            checkpoint_signer: tokio::sync::OnceCell::new(),
            message_queue,
        }))
    }

    pub async fn db(&self) -> Result<deadpool_postgres::Client, crate::error::ApiError> {
        Ok(self.pool.get().await?)
    }
}

/// The configured blob store, built without I/O so a Lambda cold start does
/// no blocking work: the local store creates its directories on first
/// write, and the S3 client (which reads credentials and region) is built on
/// first use.
pub fn blob_store_lazy(cfg: &BlobBackend) -> Arc<dyn BlobStore> {
    match cfg {
        BlobBackend::Local { dir } => Arc::new(LocalBlobStore::new(dir)),
        BlobBackend::S3 { bucket } => Arc::new(LazyS3BlobStore::new(bucket.clone())),
    }
}

/// An [`S3BlobStore`] whose client is made from the standard AWS
/// environment (`AWS_ENDPOINT_URL` included) the first time it is needed.
pub struct LazyS3BlobStore {
    bucket: String,
    store: tokio::sync::OnceCell<S3BlobStore>,
}

impl LazyS3BlobStore {
    pub fn new(bucket: String) -> Self {
        LazyS3BlobStore {
            bucket,
            store: tokio::sync::OnceCell::new(),
        }
    }

    async fn store(&self) -> &S3BlobStore {
        self.store
            .get_or_init(|| async {
                let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                S3BlobStore::new(s3_client(&sdk), self.bucket.clone())
            })
            .await
    }
}

#[async_trait]
impl BlobStore for LazyS3BlobStore {
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<(), BlobError> {
        self.store().await.put(key, body, opts).await
    }

    async fn put_stream(
        &self,
        key: &str,
        reader: BlobReader,
        opts: &PutOptions,
    ) -> Result<u64, BlobError> {
        self.store().await.put_stream(key, reader, opts).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        self.store().await.get(key).await
    }

    async fn get_stream(&self, key: &str) -> Result<BlobReader, BlobError> {
        self.store().await.get_stream(key).await
    }

    async fn head(&self, key: &str) -> Result<Option<BlobMeta>, BlobError> {
        self.store().await.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.store().await.delete(key).await
    }

    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>, BlobError> {
        self.store().await.get_tags(key).await
    }

    async fn put_tags(&self, key: &str, tags: &[(String, String)]) -> Result<(), BlobError> {
        self.store().await.put_tags(key, tags).await
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<String>, BlobError> {
        self.store().await.presign_get(key, ttl).await
    }

    async fn presign_put(
        &self,
        key: &str,
        ttl: Duration,
        content_type: &str,
        sha256: Option<[u8; 32]>,
    ) -> Result<Option<String>, BlobError> {
        self.store()
            .await
            .presign_put(key, ttl, content_type, sha256)
            .await
    }
}
