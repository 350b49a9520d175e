//! Iceberg file I/O on `object_store`: an implementation of iceberg-rust's `Storage` trait.
//!
//! One implementation serves every warehouse scheme:
//! - `file:///abs/path` (and bare absolute paths): the local file system; files are fsynced
//!   before a write is reported done, so a committed snapshot survives a machine crash;
//! - `memory://NAME/...`: process-wide in-memory stores keyed by `NAME` (tests);
//! - `s3://bucket/key` (also `s3a://`): Amazon S3 or any S3-compatible endpoint, configured
//!   with iceberg's standard properties (`s3.endpoint`, `s3.region`, `s3.access-key-id`,
//!   `s3.secret-access-key`, `s3.session-token`, `s3.path-style-access`), the same keys
//!   PyIceberg reads.
//!
//! The storage holds only its configuration (it is `typetag`-serialized by iceberg) and builds
//! object-store clients lazily, one per scheme and bucket.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileIO, FileIOBuilder, FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage,
    StorageConfig, StorageFactory,
};
use iceberg::{Error as IcebergError, ErrorKind};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// Iceberg property keys for S3 (the names PyIceberg and Java use).
pub mod s3_props {
    /// Endpoint URL of an S3-compatible service.
    pub const ENDPOINT: &str = "s3.endpoint";
    /// Region.
    pub const REGION: &str = "s3.region";
    /// Access key id.
    pub const ACCESS_KEY_ID: &str = "s3.access-key-id";
    /// Secret access key.
    pub const SECRET_ACCESS_KEY: &str = "s3.secret-access-key";
    /// Session token.
    pub const SESSION_TOKEN: &str = "s3.session-token";
    /// `true` for path-style requests (default for custom endpoints).
    pub const PATH_STYLE_ACCESS: &str = "s3.path-style-access";
}

static MEMORY_STORES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Builds [`ObjectStoreStorage`] for iceberg's `FileIO`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStoreStorageFactory;

#[typetag::serde]
impl StorageFactory for ObjectStoreStorageFactory {
    fn build(&self, config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStoreStorage::new(config.props().clone())))
    }
}

/// A `FileIO` over object_store with the given iceberg storage properties.
pub fn file_io(props: HashMap<String, String>) -> FileIO {
    FileIOBuilder::new(Arc::new(ObjectStoreStorageFactory))
        .with_props(props)
        .build()
}

/// The local file a `file:` or bare absolute location names; `None` for any other scheme
/// (and for relative local paths, which no warehouse uses).
pub fn local_path(location: &str) -> Option<std::path::PathBuf> {
    if !(location.starts_with('/') || location.starts_with("file:")) {
        return None;
    }
    let raw = location.strip_prefix("file://").unwrap_or(location);
    let raw = raw.strip_prefix("file:").unwrap_or(raw);
    let path = std::path::PathBuf::from(raw);
    path.is_absolute().then_some(path)
}

/// iceberg `Storage` over object_store (see the module docs for the schemes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStoreStorage {
    props: HashMap<String, String>,
    #[serde(skip)]
    clients: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

/// Where a location lives: the client for it and the object path inside it.
struct Resolved {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    /// The local file, for fsync after writes.
    local: Option<std::path::PathBuf>,
}

fn io_error(location: &str, e: impl std::fmt::Display) -> IcebergError {
    IcebergError::new(
        ErrorKind::Unexpected,
        format!("object storage failed on `{location}`: {e}"),
    )
}

fn store_error(location: &str, e: object_store::Error) -> IcebergError {
    let retryable = !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
    );
    let kind = if matches!(e, object_store::Error::NotFound { .. }) {
        ErrorKind::DataInvalid
    } else {
        ErrorKind::Unexpected
    };
    IcebergError::new(kind, format!("object storage failed on `{location}`: {e}"))
        .with_retryable(retryable)
        .with_source(e)
}

impl ObjectStoreStorage {
    /// A storage with iceberg storage properties (`s3.*`).
    pub fn new(props: HashMap<String, String>) -> Self {
        Self {
            props,
            clients: Arc::default(),
        }
    }

    fn client(
        &self,
        key: &str,
        build: impl FnOnce() -> iceberg::Result<Arc<dyn ObjectStore>>,
    ) -> iceberg::Result<Arc<dyn ObjectStore>> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(key) {
            return Ok(c.clone());
        }
        let client = build()?;
        clients.insert(key.to_string(), client.clone());
        Ok(client)
    }

    fn resolve(&self, location: &str) -> iceberg::Result<Resolved> {
        let bad = |reason: &str| {
            IcebergError::new(
                ErrorKind::DataInvalid,
                format!("unsupported storage location `{location}`: {reason}"),
            )
        };
        if location.starts_with('/') || location.starts_with("file:") {
            let Some(fs_path) = local_path(location) else {
                return Err(bad("local paths must be absolute"));
            };
            let path =
                ObjectPath::from_absolute_path(&fs_path).map_err(|e| io_error(location, e))?;
            let store = self.client("file", || Ok(Arc::new(LocalFileSystem::new())))?;
            return Ok(Resolved {
                store,
                path,
                local: Some(fs_path),
            });
        }
        let (scheme, rest) = location
            .split_once("://")
            .ok_or_else(|| bad("expected file://, s3:// or memory://"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("missing bucket or store name"));
        }
        let path = ObjectPath::parse(key).map_err(|e| io_error(location, e))?;
        let store = match scheme {
            "memory" => self.client(&format!("memory://{bucket}"), || {
                let mut stores = MEMORY_STORES.lock().unwrap_or_else(|e| e.into_inner());
                let store = stores.entry(bucket.to_string()).or_default().clone();
                Ok(store as Arc<dyn ObjectStore>)
            })?,
            "s3" | "s3a" => self.client(&format!("s3://{bucket}"), || self.build_s3(bucket))?,
            _ => return Err(bad("expected file://, s3:// or memory://")),
        };
        Ok(Resolved {
            store,
            path,
            local: None,
        })
    }

    fn build_s3(&self, bucket: &str) -> iceberg::Result<Arc<dyn ObjectStore>> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let prop = |k: &str| self.props.get(k).filter(|v| !v.is_empty());
        if let Some(endpoint) = prop(s3_props::ENDPOINT) {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
            let path_style = prop(s3_props::PATH_STYLE_ACCESS).is_none_or(|v| v != "false");
            builder = builder.with_virtual_hosted_style_request(!path_style);
        }
        if let Some(region) = prop(s3_props::REGION) {
            builder = builder.with_region(region);
        }
        if let Some(key) = prop(s3_props::ACCESS_KEY_ID) {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = prop(s3_props::SECRET_ACCESS_KEY) {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = prop(s3_props::SESSION_TOKEN) {
            builder = builder.with_token(token);
        }
        let store = builder
            .build()
            .map_err(|e| store_error(&format!("s3://{bucket}"), e))?;
        Ok(Arc::new(store))
    }
}

/// A file found by [`list_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// The file's location, in the style of the listed prefix (`file:///...`, `/...`,
    /// `s3://bucket/...`, `memory://name/...`).
    pub location: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, ms since the epoch.
    pub last_modified_ms: i64,
}

/// Lists every file under `prefix` (a directory-like location), recursively. A prefix with
/// nothing under it (or a local directory that does not exist) lists as empty.
pub async fn list_files(
    props: &HashMap<String, String>,
    prefix: &str,
) -> iceberg::Result<Vec<ListedFile>> {
    let prefix = prefix.trim_end_matches('/');
    let storage = ObjectStoreStorage::new(props.clone());
    let r = storage.resolve(prefix)?;
    // How to turn an object path back into a location in the prefix's style (local object
    // paths are relative to the file-system root, others to the bucket).
    let root = if prefix.starts_with("file://") {
        "file:///".to_string()
    } else if prefix.starts_with("file:") {
        "file:/".to_string()
    } else if prefix.starts_with('/') {
        "/".to_string()
    } else {
        let (scheme, rest) = prefix.split_once("://").unwrap_or(("", prefix));
        let bucket = rest.split('/').next().unwrap_or(rest);
        format!("{scheme}://{bucket}/")
    };
    let mut out = Vec::new();
    let mut listing = r.store.list(Some(&r.path));
    while let Some(meta) = listing.next().await {
        match meta {
            Ok(meta) => out.push(ListedFile {
                location: format!("{root}{}", meta.location),
                size: meta.size,
                last_modified_ms: meta.last_modified.timestamp_millis(),
            }),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error(prefix, e)),
        }
    }
    out.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(out)
}

/// fsyncs a local file and its directory so a finished write survives a machine crash.
async fn sync_local(path: std::path::PathBuf) -> iceberg::Result<()> {
    let location = path.display().to_string();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&path)?.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(|e| io_error(&location, e))?
    .map_err(|e| io_error(&location, e))
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStoreStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let r = self.resolve(path)?;
        match r.store.head(&r.path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let r = self.resolve(path)?;
        let meta = r
            .store
            .head(&r.path)
            .await
            .map_err(|e| store_error(path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let r = self.resolve(path)?;
        let got = r
            .store
            .get(&r.path)
            .await
            .map_err(|e| store_error(path, e))?;
        got.bytes().await.map_err(|e| store_error(path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let r = self.resolve(path)?;
        Ok(Box::new(ObjectRead {
            store: r.store,
            path: r.path,
            location: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let r = self.resolve(path)?;
        r.store
            .put(&r.path, PutPayload::from_bytes(bs))
            .await
            .map_err(|e| store_error(path, e))?;
        match r.local {
            Some(local) => sync_local(local).await,
            None => Ok(()),
        }
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let r = self.resolve(path)?;
        Ok(Box::new(ObjectWrite {
            writer: Some(BufWriter::new(r.store, r.path)),
            local: r.local,
            location: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let r = self.resolve(path)?;
        match r.store.delete(&r.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let r = self.resolve(path)?;
        let mut listing = r.store.list(Some(&r.path));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| store_error(path, e))?;
            match r.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(path, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    location: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store
            .get_range(&self.path, range)
            .await
            .map_err(|e| store_error(&self.location, e))
    }
}

struct ObjectWrite {
    writer: Option<BufWriter>,
    local: Option<std::path::PathBuf>,
    location: String,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        let writer = self.writer.as_mut().ok_or_else(|| {
            IcebergError::new(
                ErrorKind::Unexpected,
                format!("`{}` is closed", self.location),
            )
        })?;
        writer
            .write_all(&bs)
            .await
            .map_err(|e| io_error(&self.location, e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let mut writer = self.writer.take().ok_or_else(|| {
            IcebergError::new(
                ErrorKind::Unexpected,
                format!("`{}` is already closed", self.location),
            )
        })?;
        writer
            .shutdown()
            .await
            .map_err(|e| io_error(&self.location, e))?;
        match self.local.take() {
            Some(local) => sync_local(local).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exercise(io: &FileIO, root: &str) {
        let a = format!("{root}/t/metadata/a.json");
        let out = io.new_output(&a).unwrap();
        out.write(Bytes::from_static(b"hello world")).await.unwrap();
        assert!(io.exists(&a).await.unwrap());
        let input = io.new_input(&a).unwrap();
        assert_eq!(input.metadata().await.unwrap().size, 11);
        assert_eq!(
            input.read().await.unwrap(),
            Bytes::from_static(b"hello world")
        );
        let reader = input.reader().await.unwrap();
        assert_eq!(
            reader.read(6..11).await.unwrap(),
            Bytes::from_static(b"world")
        );

        let b = format!("{root}/t/data/b.parquet");
        let mut w = io.new_output(&b).unwrap().writer().await.unwrap();
        w.write(Bytes::from_static(b"part1-")).await.unwrap();
        w.write(Bytes::from_static(b"part2")).await.unwrap();
        w.close().await.unwrap();
        assert_eq!(
            io.new_input(&b).unwrap().read().await.unwrap(),
            Bytes::from_static(b"part1-part2")
        );

        io.delete(&a).await.unwrap();
        io.delete(&a).await.unwrap();
        assert!(!io.exists(&a).await.unwrap());
        io.delete_prefix(format!("{root}/t")).await.unwrap();
        assert!(!io.exists(&b).await.unwrap());
        assert!(io.new_input(&b).unwrap().read().await.is_err());
    }

    #[tokio::test]
    async fn local_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let io = file_io(HashMap::new());
        exercise(&io, &format!("file://{}", dir.path().display())).await;
        exercise(&io, &dir.path().display().to_string()).await;
    }

    #[tokio::test]
    async fn memory_stores_are_shared_by_name() {
        let io = file_io(HashMap::new());
        exercise(&io, "memory://storage-test/wh").await;
        let other = file_io(HashMap::new());
        let loc = "memory://storage-test-shared/x";
        io.new_output(loc)
            .unwrap()
            .write(Bytes::from_static(b"1"))
            .await
            .unwrap();
        assert!(other.exists(loc).await.unwrap());
    }

    #[tokio::test]
    async fn lists_files_in_the_style_of_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let io = file_io(HashMap::new());
        for root in [
            format!("file://{}/wh", dir.path().display()),
            format!("{}/wh2", dir.path().display()),
            "memory://storage-list/wh".to_string(),
        ] {
            let before = chrono::Utc::now().timestamp_millis() - 1000;
            for name in [
                "t/metadata/a.json",
                "t/data/b.parquet",
                "t/data/x/c.parquet",
            ] {
                io.new_output(format!("{root}/{name}"))
                    .unwrap()
                    .write(Bytes::from_static(b"12345"))
                    .await
                    .unwrap();
            }
            let listed = list_files(&HashMap::new(), &format!("{root}/t/"))
                .await
                .unwrap();
            let names: Vec<&str> = listed.iter().map(|f| f.location.as_str()).collect();
            assert_eq!(
                names,
                [
                    format!("{root}/t/data/b.parquet"),
                    format!("{root}/t/data/x/c.parquet"),
                    format!("{root}/t/metadata/a.json"),
                ]
            );
            for f in &listed {
                assert_eq!(f.size, 5);
                assert!(f.last_modified_ms >= before, "{f:?}");
                assert!(io.exists(&f.location).await.unwrap());
            }
            assert!(
                list_files(&HashMap::new(), &format!("{root}/none"))
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[tokio::test]
    async fn rejects_unknown_schemes() {
        let io = file_io(HashMap::new());
        let err = io.new_input("gs://b/k").unwrap().read().await.unwrap_err();
        assert!(
            err.to_string().contains("unsupported storage location"),
            "{err}"
        );
        assert!(io.exists("relative/path").await.is_err());
    }
}
