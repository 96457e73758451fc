//! `LocalBlobStore`: blobs in a directory, for `ledgerline serve`.
//!
//! Layout under the root directory:
//!
//! ```text
//! objects/<h2>/<h64>.json          the blob's record: key, size, content type,
//!                                  digest, tags and which data file is current
//! objects/<h2>/<h64>.<uuid>.data   the bytes of one version
//! tmp/                             uploads in progress
//! ```
//!
//! `<h64>` is the hex SHA-256 of the key and `<h2>` its first two digits.
//! Hashing the key (rather than using it as a path) is what lets the store
//! hold keys that a filesystem cannot: S3 keys are flat, so `a` and `a/b` can
//! both exist, and a 1024-byte key is longer than a file name may be.
//!
//! Every write goes to `tmp/` and is renamed into place, and the record is
//! the commit point: it is replaced atomically and names the data file, so a
//! reader sees either the old blob or the new one, with matching metadata.
//! Record updates are serialised by a lock inside this value, so one store
//! per directory per process (which is how `serve` uses it).

use super::{
    checked_options, parse_hex_digest, sorted_tags, validate_key, validate_tags, BlobError,
    BlobMeta, BlobReader, BlobStore, PutOptions,
};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// Read buffer for streamed uploads.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
    /// Serialises read-modify-write of records (put, put_tags, delete), so a
    /// tag update cannot resurrect the data file of a replaced version.
    records: Arc<Mutex<()>>,
}

/// The per-blob record, stored as JSON next to the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    key: String,
    /// File name (not path) of the current data file, in the same directory.
    data_file: String,
    size: u64,
    content_type: String,
    sha256: String,
    tags: Vec<(String, String)>,
}

/// Removes a temporary file when dropped, unless it was moved into place.
/// Covers errors and a caller that gives up (drops the future) mid-upload.
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// The file now lives elsewhere; nothing to clean up.
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn io_error(context: &'static str) -> impl FnOnce(std::io::Error) -> BlobError {
    move |e| BlobError::backend(e, context)
}

impl LocalBlobStore {
    /// A store rooted at `dir`. Directories are created on first write.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalBlobStore {
            root: dir.into(),
            records: Arc::new(Mutex::new(())),
        }
    }

    fn key_hash(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    fn object_dir(&self, key_hash: &str) -> PathBuf {
        self.root.join("objects").join(&key_hash[..2])
    }

    fn record_path(&self, key: &str) -> PathBuf {
        let h = Self::key_hash(key);
        self.object_dir(&h).join(format!("{h}.json"))
    }

    async fn new_temp_file(&self, suffix: &str) -> Result<(tokio::fs::File, TempFile), BlobError> {
        let tmp_dir = self.root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(io_error("creating the blob temp directory"))?;
        let path = tmp_dir.join(format!("{}.{suffix}", uuid::Uuid::new_v4()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io_error("creating a blob temp file"))?;
        Ok((file, TempFile { path: Some(path) }))
    }

    async fn read_record(&self, key: &str) -> Result<Option<Record>, BlobError> {
        match tokio::fs::read(self.record_path(key)).await {
            Ok(json) => serde_json::from_slice(&json)
                .map(Some)
                .map_err(|e| BlobError::backend(e, "reading a blob record (corrupt JSON)")),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::backend(e, "reading a blob record")),
        }
    }

    /// Atomically replaces the record (temp file + rename). Caller holds the lock.
    async fn write_record(&self, record: &Record) -> Result<(), BlobError> {
        let json = serde_json::to_vec(record)
            .map_err(|e| BlobError::backend(e, "encoding a blob record"))?;
        let (mut file, mut tmp) = self.new_temp_file("json").await?;
        file.write_all(&json)
            .await
            .map_err(io_error("writing a blob record"))?;
        file.sync_all()
            .await
            .map_err(io_error("syncing a blob record"))?;
        drop(file);
        let dest = self.record_path(&record.key);
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(io_error("creating a blob directory"))?;
        }
        tokio::fs::rename(tmp.path(), &dest)
            .await
            .map_err(io_error("moving a blob record into place"))?;
        tmp.disarm();
        Ok(())
    }

    /// Opens the current data file. A concurrent `put` may replace the
    /// record and remove the old data file between our reading the record
    /// and opening the file; then the fresh record names a newer file.
    async fn open_current(&self, key: &str) -> Result<(Record, tokio::fs::File), BlobError> {
        validate_key(key)?;
        let mut attempts = 0;
        loop {
            let record = self.read_record(key).await?.ok_or(BlobError::NotFound)?;
            let path = self
                .object_dir(&Self::key_hash(key))
                .join(&record.data_file);
            match tokio::fs::File::open(&path).await {
                Ok(file) => return Ok((record, file)),
                Err(e) if e.kind() == ErrorKind::NotFound && attempts < 5 => attempts += 1,
                Err(e) => return Err(BlobError::backend(e, "opening a blob data file")),
            }
        }
    }

    /// Copies `reader` into a temp file, hashing as it goes, then commits it
    /// under `key`. Shared by `put` and `put_stream`.
    async fn store(
        &self,
        key: &str,
        mut reader: impl tokio::io::AsyncRead + Unpin + Send,
        opts: &PutOptions,
    ) -> Result<u64, BlobError> {
        validate_key(key)?;
        let content_type = checked_options(opts)?.to_string();

        let (mut file, mut tmp) = self.new_temp_file("data").await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(io_error("reading the upload stream"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .await
                .map_err(io_error("writing a blob temp file"))?;
            size += n as u64;
        }
        file.sync_all()
            .await
            .map_err(io_error("syncing a blob temp file"))?;
        drop(file);
        let digest: [u8; 32] = hasher.finalize().into();
        if opts.sha256.is_some_and(|want| want != digest) {
            return Err(BlobError::ChecksumMismatch);
        }

        let key_hash = Self::key_hash(key);
        let dir = self.object_dir(&key_hash);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_error("creating a blob directory"))?;
        let data_file = format!("{key_hash}.{}.data", uuid::Uuid::new_v4());
        tokio::fs::rename(tmp.path(), dir.join(&data_file))
            .await
            .map_err(io_error("moving a blob into place"))?;
        tmp.disarm();
        // Until the record below points at it, the new data file is an
        // orphan; remove it if committing fails.
        let mut uncommitted = TempFile {
            path: Some(dir.join(&data_file)),
        };

        let record = Record {
            key: key.to_string(),
            data_file,
            size,
            content_type,
            sha256: hex::encode(digest),
            tags: sorted_tags(opts.tags.clone()),
        };
        let previous = {
            let _guard = self.records.lock().await;
            let previous = self.read_record(key).await.ok().flatten();
            self.write_record(&record).await?;
            previous
        };
        uncommitted.disarm();
        if let Some(old) = previous {
            // Readers that already opened it keep reading it (Unix semantics).
            let _ = tokio::fs::remove_file(dir.join(old.data_file)).await;
        }
        Ok(size)
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<(), BlobError> {
        self.store(key, &body[..], opts).await.map(|_| ())
    }

    async fn put_stream(
        &self,
        key: &str,
        reader: BlobReader,
        opts: &PutOptions,
    ) -> Result<u64, BlobError> {
        self.store(key, reader, opts).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        let (record, mut file) = self.open_current(key).await?;
        let mut body = Vec::with_capacity(usize::try_from(record.size).unwrap_or(0));
        file.read_to_end(&mut body)
            .await
            .map_err(io_error("reading a blob"))?;
        Ok(Bytes::from(body))
    }

    async fn get_stream(&self, key: &str) -> Result<BlobReader, BlobError> {
        let (_, file) = self.open_current(key).await?;
        Ok(Box::new(file))
    }

    async fn head(&self, key: &str) -> Result<Option<BlobMeta>, BlobError> {
        validate_key(key)?;
        Ok(self.read_record(key).await?.map(|r| BlobMeta {
            size: r.size,
            content_type: r.content_type,
            sha256: parse_hex_digest(&r.sha256),
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        let removed = {
            let _guard = self.records.lock().await;
            let Some(record) = self.read_record(key).await? else {
                return Ok(());
            };
            match tokio::fs::remove_file(self.record_path(key)).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(BlobError::backend(e, "deleting a blob record")),
            }
            record
        };
        let data = self
            .object_dir(&Self::key_hash(key))
            .join(removed.data_file);
        match tokio::fs::remove_file(data).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::backend(e, "deleting a blob data file")),
        }
    }

    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>, BlobError> {
        validate_key(key)?;
        let record = self.read_record(key).await?.ok_or(BlobError::NotFound)?;
        Ok(sorted_tags(record.tags))
    }

    async fn put_tags(&self, key: &str, tags: &[(String, String)]) -> Result<(), BlobError> {
        validate_key(key)?;
        validate_tags(tags)?;
        let _guard = self.records.lock().await;
        let mut record = self.read_record(key).await?.ok_or(BlobError::NotFound)?;
        record.tags = sorted_tags(tags.to_vec());
        self.write_record(&record).await
    }

    async fn presign_get(&self, key: &str, _ttl: Duration) -> Result<Option<String>, BlobError> {
        validate_key(key)?;
        Ok(None)
    }

    async fn presign_put(
        &self,
        key: &str,
        _ttl: Duration,
        content_type: &str,
        _sha256: Option<[u8; 32]>,
    ) -> Result<Option<String>, BlobError> {
        validate_key(key)?;
        super::validate_content_type(content_type)?;
        Ok(None)
    }
}
