//! `unitable serve`: builds the roles from flags and runs the gRPC and HTTP servers.
//!
//! Shutdown has one path: SIGINT/SIGTERM cancels the shared token; the gRPC server stops
//! taking requests and drains the ones in flight, then the HTTP server stops. Any task that
//! ends on its own before that is an error and brings the process down.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use unitable_compactor::{Compactor, SchedulerConfig};
use unitable_core::admin::{ClusterDirectory, TableAdmin};
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::{
    Changelog, Clusters, KafkaChangelog, KafkaConfig, LOCAL_CLUSTER, LocalChangelog, LocalConfig,
    RoutedChangelog, valid_cluster_name,
};
use unitable_core::clock::SystemClock;
use unitable_core::commit::pointer::SqlMetadataPointer;
use unitable_core::commit::row_delta::Committer;
use unitable_core::groups::GroupStore;
use unitable_core::ingest::IngestPositions;
use unitable_core::lease::LeaseStore;
use unitable_core::requests::RequestLog;
use unitable_core::storage::s3_props;
use unitable_proto::FILE_DESCRIPTOR_SET;
use unitable_proto::v1::access_service_server::AccessServiceServer;
use unitable_proto::v1::compaction_service_server::CompactionServiceServer;
use unitable_proto::v1::ops_service_server::OpsServiceServer;
use unitable_proto::v1::read_service_server::ReadServiceServer;
use unitable_proto::v1::table_admin_service_server::TableAdminServiceServer;
use unitable_proto::v1::write_service_server::WriteServiceServer;
use unitable_reader::{GroupSettings, Reader};
use unitable_writer::config::host_name;
use unitable_writer::{CheckpointPolicy, LeaseConfig, Writer, WriterConfig};

use crate::access::audit::Audit;
use crate::access::auth::Authenticator;
use crate::access::store::AccessStore;
use crate::access::{Access, Grant, Grantee, Object, Privilege, token};
use crate::cli::{KafkaArgs, SecurityArgs, ServeArgs};
use crate::console::{self, Console, History};
use crate::flight::{FlightApi, FlightServiceServer};
use crate::grpc::access::AccessApi;
use crate::grpc::admin::AdminApi;
use crate::grpc::compact::CompactApi;
use crate::grpc::ops::OpsApi;
use crate::grpc::read::ReadApi;
use crate::grpc::write::WriteApi;
use crate::telemetry::log_level::LogLevel;

/// Runs the server until SIGINT/SIGTERM.
pub(crate) async fn run(args: ServeArgs, log_level: LogLevel) -> anyhow::Result<()> {
    let data_dir = absolute(&args.data_dir)?;
    std::fs::create_dir_all(&data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}; choose another with --data-dir",
            data_dir.display()
        )
    })?;
    let metrics = crate::telemetry::install_recorder()?;
    metrics::gauge!("unitable_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);

    let config = catalog_config(&args, &data_dir);
    let access = open_access(&args.security, &config.uri).await?;
    let tls = tls_config(&args.security)?;
    let resp_tls = match &args.resp_addr {
        Some(_) => resp_tls_acceptor(&args.security)?,
        None => None,
    };
    info!(catalog = %config.uri, warehouse = %config.warehouse, "opening the Iceberg catalog");
    let catalog = TableCatalog::open(config)
        .await
        .context("cannot open the Iceberg catalog; check --catalog and --warehouse")?;
    let (changelog, clusters) = open_changelog(&args, &data_dir).await?;
    let pointer = SqlMetadataPointer::connect(catalog.config())
        .await
        .context("cannot open the catalog database for commits")?;
    let committer = Committer::new(catalog.clone(), Arc::new(pointer));
    // Schema changes (rename, drop, widen...) are metadata commits of the same commit layer.
    let schema_committer = committer.clone();
    let routes_committer = committer.clone();
    // The compactor shares the writer's committer, so rewrites and row deltas take turns.
    let compactor = Compactor::new(
        catalog.clone(),
        committer.clone(),
        Arc::new(SystemClock),
        SchedulerConfig {
            interval: args.compaction_interval,
            concurrency: args.compaction_concurrency.max(1),
            ..SchedulerConfig::default()
        },
    );
    // Compaction (Parquet decode and encode) runs on its own threads, off the gRPC runtime.
    let compaction_runtime = BackgroundRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.compaction_concurrency.max(1))
            .thread_name("unitable-compactor")
            .enable_all()
            .build()
            .context("cannot start the compactor's threads")?,
    ));
    let compaction = compaction_runtime.handle();
    let compact_api = CompactApi::new(compactor.clone(), compaction.clone(), access.clone());
    // Bind both listeners before serving, so a taken port fails start-up with a clear error.
    let grpc_listener = TcpListener::bind(&args.grpc_addr).await.with_context(|| {
        format!(
            "cannot listen on {} for gRPC; is another unitable running? choose another with --grpc-addr",
            args.grpc_addr
        )
    })?;
    let http_listener = TcpListener::bind(&args.http_addr).await.with_context(|| {
        format!(
            "cannot listen on {} for HTTP; choose another with --http-addr",
            args.http_addr
        )
    })?;
    let resp_listener = match &args.resp_addr {
        None => None,
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for RESP; choose another with --resp-addr")
        })?),
    };
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let leases = match LeaseStore::connect(catalog.config())
        .await
        .context("cannot open the committer lease tables in the catalog database")?
    {
        Some(store) => Some(LeaseConfig {
            store,
            node: args
                .node_id
                .clone()
                .unwrap_or_else(|| format!("{}:{}", host_name(), grpc_addr.port())),
            ttl: args.committer_lease,
        }),
        None => None,
    };
    if let Some(leases) = &leases {
        info!(node = %leases.node, lease_ms = leases.ttl.as_millis() as u64, "sharing the tables' committers by leases in the catalog database");
    }
    let requests = RequestLog::connect(catalog.config())
        .await
        .context("cannot open the write request log in the catalog database")?;
    if let (Some(requests), Some(leases)) = (&requests, &leases) {
        // Claims this node made before a restart are abandoned: their retries may go on.
        let abandoned = requests
            .abandon_all(&leases.node)
            .await
            .context("cannot release this node's earlier write requests")?;
        if abandoned > 0 {
            info!(
                requests = abandoned,
                "write requests left unfinished by this node's last run can be retried"
            );
        }
    }
    // Committers (record decoding, Parquet encoding) run on their own threads too.
    let commit_runtime = BackgroundRuntime::start("unitable-commit")?;
    let writer = Writer::new(
        catalog.clone(),
        changelog.clone(),
        committer,
        WriterConfig {
            commit_interval: args.commit_interval,
            max_batch_records: usize::try_from(args.commit_max_records).unwrap_or(usize::MAX),
            committer_runtime: Some(commit_runtime.handle()),
            leases,
            requests,
            index_checkpoints: CheckpointPolicy {
                enabled: !args.no_index_checkpoints,
                min_interval: args.index_checkpoint_interval,
                ..CheckpointPolicy::default()
            },
            index_memory_limit: args.index_memory_limit.map(|bytes| bytes as u64),
            index_spill_dir: match &args.index_spill_dir {
                Some(dir) => absolute(dir)?,
                None => data_dir.join("index-spill"),
            },
            ..WriterConfig::default()
        },
    );
    let committers = writer
        .start_committers()
        .await
        .context("cannot list the tables to start their committers")?;
    info!(tables = committers, "committers started");
    let mut reader = Reader::new(catalog.clone(), changelog.clone())
        .with_sql_memory_limit(args.sql_memory_limit)
        .with_lookup_memory_limit(args.lookup_memory_limit)
        .with_lookup_cache(args.lookup_cache_memory as u64)
        .with_lookup_cache_warming(args.lookup_cache_warm)
        .with_lookup_max_staleness(args.lookup_max_staleness)
        .with_training_set_memory(args.training_set_memory);
    if let Some(store) = GroupStore::connect(catalog.config())
        .await
        .context("cannot open the consumer group tables in the catalog database")?
    {
        reader = reader.with_groups(GroupSettings {
            store,
            node: args
                .node_id
                .clone()
                .unwrap_or_else(|| format!("{}:{}", host_name(), grpc_addr.port())),
            session: args.consumer_group_session,
        });
    }
    // Reads (scans, SQL) run off the gRPC runtime, so a heavy query cannot starve writes and
    // admin calls.
    let read_runtime = BackgroundRuntime::start("unitable-read")?;
    let read_handle = read_runtime.handle();
    let ingest_positions = IngestPositions::connect(catalog.config())
        .await
        .context("cannot open the ingest position table in the catalog database")?;
    let routes_catalog = catalog.clone();
    let mut admin = TableAdmin::new(catalog, changelog)
        .with_committer(schema_committer)
        .with_clusters(clusters);
    if let Some(positions) = &ingest_positions {
        admin = admin.with_ingest_positions(positions.clone());
    }

    let shutdown = CancellationToken::new();
    // Every table's changelog route (cluster, generation) follows its metadata within 500 ms,
    // also where nothing else on this node reloads the table (a long STREAM).
    tokio::spawn(unitable_core::changelog::routes::follow(
        routes_catalog,
        routes_committer,
        std::time::Duration::from_millis(500),
        shutdown.child_token().cancelled_owned(),
    ));
    // CDC ingest of the tables this node commits whose properties name a source topic.
    let ingest = match ingest_positions {
        Some(positions) => {
            let writer = writer.clone();
            let stop = shutdown.child_token();
            Some(tokio::spawn(async move {
                writer.run_ingest(positions, stop).await;
            }))
        }
        None => None,
    };
    // Consumer group lag and members, refreshed every third of a member session.
    read_handle.spawn({
        let reader = reader.clone();
        let shutdown = shutdown.child_token();
        let interval = (args.consumer_group_session / 3).max(std::time::Duration::from_millis(100));
        async move {
            reader
                .report_group_metrics(interval, shutdown.cancelled_owned())
                .await;
        }
    });
    let scheduler = {
        let writer = writer.clone();
        compaction
            .spawn(compactor.run_where(shutdown.child_token(), move |table| writer.commits(table)))
    };
    // The web console answers through the same service implementations as gRPC; its
    // freshness history samples every table in the background.
    let history = History::new(args.console_sample_interval);
    read_handle.spawn(history.clone().run(reader.clone(), shutdown.child_token()));
    let console = Console::new(
        AdminApi::new(
            admin.clone(),
            writer.clone(),
            reader.clone(),
            compact_api.clone(),
            access.clone(),
        ),
        ReadApi::new(reader.clone(), read_handle.clone(), access.clone()),
        access.clone(),
        reader.clone(),
        history,
    );
    let (resp_reader, resp_access) = (reader.clone(), access.clone());
    let mut tasks = tokio::task::JoinSet::new();
    {
        let shutdown = shutdown.clone();
        let writer = writer.clone();
        let max_request_bytes = args.max_request_bytes;
        let access = access.clone();
        tasks.spawn(async move {
            let roles = Roles {
                admin,
                writer,
                reader,
                read_handle,
                compact: compact_api,
                ops: OpsApi::new(log_level, access.clone()),
                access,
            };
            let result = serve_grpc(
                grpc_listener,
                roles,
                tls,
                max_request_bytes,
                shutdown.clone(),
            )
            .await;
            ("grpc", result)
        });
    }
    {
        let shutdown = shutdown.clone();
        let interval = args.security.access_reload_interval;
        tasks.spawn(async move {
            reload_access(access, interval, shutdown).await;
            ("access-reload", Ok(()))
        });
    }
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let result = serve_http(http_listener, metrics, console, shutdown).await;
            ("http", result)
        });
    }
    if let Some(listener) = resp_listener {
        let (shutdown, reader, access) = (shutdown.clone(), resp_reader, resp_access);
        info!(resp_addr = %listener.local_addr()?, tls = resp_tls.is_some(), "serving LOOKUP over RESP");
        tasks.spawn(async move {
            let result =
                crate::resp::serve_resp(listener, reader, access, resp_tls, shutdown).await;
            ("resp", result)
        });
    }
    info!(%grpc_addr, %http_addr, data_dir = %data_dir.display(), "unitable is serving");

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut first_error = None;
    tokio::select! {
        () = &mut signal => info!("shutting down: stopping intake"),
        Some(joined) = tasks.join_next() => {
            first_error = Some(task_outcome(joined));
        }
    }
    shutdown.cancel();
    // The scheduler stops at once (a rewrite cut off is never committed; its files are left
    // to orphan removal).
    let _ = scheduler.await;
    drop(compaction_runtime);
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = task_outcome(joined)
            && first_error.is_none()
        {
            first_error = Some(Err(e));
        }
    }
    // The ingesters are intake too: they stop between (or within) batches; a batch cut off is
    // written again, under the same request ids, by the next start.
    if let Some(ingest) = ingest {
        let _ = ingest.await;
    }
    // Intake has stopped: let every committer commit what the changelog holds.
    info!("shutting down: committing buffered changes");
    if tokio::time::timeout(std::time::Duration::from_secs(60), writer.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "committers did not finish within 60 s; the changelog keeps their records and the next start commits them"
        );
    }
    drop(commit_runtime);
    match first_error {
        Some(Err(e)) => Err(e),
        _ => {
            info!("shutdown complete");
            Ok(())
        }
    }
}

/// A runtime for background work, shut down without blocking when dropped (also on an early
/// error return from async code, where dropping a runtime the normal way would panic).
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl BackgroundRuntime {
    fn start(name: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(name)
            .enable_all()
            .build()
            .with_context(|| format!("cannot start the {name} runtime"))?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn task_outcome(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match joined {
        Ok((_, Ok(()))) => Ok(()),
        Ok((name, Err(e))) => Err(e.context(format!("task `{name}` failed"))),
        Err(e) => Err(anyhow::anyhow!("a server task panicked: {e}")),
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve the path {}", path.display()))
}

fn catalog_config(args: &ServeArgs, data_dir: &Path) -> CatalogConfig {
    let embedded = CatalogConfig::embedded(data_dir);
    let mut storage_props = HashMap::new();
    let s3 = &args.storage;
    for (key, value) in [
        (s3_props::ENDPOINT, &s3.s3_endpoint),
        (s3_props::REGION, &s3.s3_region),
        (s3_props::ACCESS_KEY_ID, &s3.s3_access_key_id),
        (s3_props::SECRET_ACCESS_KEY, &s3.s3_secret_access_key),
    ] {
        if let Some(value) = value {
            storage_props.insert(key.to_string(), value.clone());
        }
    }
    CatalogConfig {
        uri: args.catalog.catalog.clone().unwrap_or(embedded.uri),
        warehouse: args.catalog.warehouse.clone().unwrap_or(embedded.warehouse),
        storage_props,
    }
}

/// Opens the changelog clusters: `default` (`--kafka-brokers`), each `--kafka-cluster`, and
/// the embedded local log as `local` when no `--kafka-brokers` is given. Tables are routed to
/// their cluster by [`RoutedChangelog`].
async fn open_changelog(
    args: &ServeArgs,
    data_dir: &Path,
) -> anyhow::Result<(Arc<dyn Changelog>, ClusterDirectory)> {
    let kafka = &args.kafka;
    let mut named: Vec<(String, String)> = Vec::new();
    if let Some(brokers) = &kafka.kafka_brokers {
        named.push(("default".to_string(), brokers.clone()));
    }
    for cluster in &kafka.kafka_clusters {
        let (name, bootstrap) = cluster.split_once('=').with_context(|| {
            format!("--kafka-cluster `{cluster}` must be NAME=BOOTSTRAP, e.g. eu=kafka-eu:9092")
        })?;
        let name = name.trim().to_string();
        if !valid_cluster_name(&name) || name == LOCAL_CLUSTER {
            anyhow::bail!(
                "--kafka-cluster `{cluster}`: the name must be 1 to 32 of a-z, 0-9 and -, and not `{LOCAL_CLUSTER}` (the embedded log)"
            );
        }
        if named.iter().any(|(n, _)| *n == name) {
            anyhow::bail!(
                "cluster `{name}` is given twice (`default` is the cluster of --kafka-brokers)"
            );
        }
        named.push((name, bootstrap.trim().to_string()));
    }
    let mut clusters: Clusters = BTreeMap::new();
    let mut directory = ClusterDirectory::default();
    for (name, brokers) in named {
        let config = kafka_config(kafka, &name, &brokers)?;
        info!(cluster = %name, %brokers, "changelog cluster: Kafka");
        let log = KafkaChangelog::connect(config).await.with_context(|| {
            format!(
                "cannot reach the Kafka brokers {brokers} of cluster `{name}`; check --kafka-brokers, --kafka-cluster and --kafka-option"
            )
        })?;
        clusters.insert(name.clone(), Arc::new(log));
        directory.bootstrap.insert(name, brokers);
    }
    if kafka.kafka_brokers.is_none() {
        let root = data_dir.join("changelog");
        info!(root = %root.display(), "changelog cluster `local`: the embedded log");
        let log = LocalChangelog::open(LocalConfig::new(&root))
            .await
            .with_context(|| {
                format!(
                    "cannot open the local changelog in {}; check the directory's permissions and free space",
                    root.display()
                )
            })?;
        clusters.insert(LOCAL_CLUSTER.to_string(), Arc::new(log));
        directory
            .bootstrap
            .insert(LOCAL_CLUSTER.to_string(), String::new());
    }
    directory.default = match &kafka.default_cluster {
        Some(name) => name.clone(),
        None if kafka.kafka_brokers.is_some() => "default".to_string(),
        None => LOCAL_CLUSTER.to_string(),
    };
    let routed = RoutedChangelog::new(clusters, &directory.default).map_err(|e| {
        anyhow::anyhow!("{e}; name it with --kafka-cluster or pick another --default-cluster")
    })?;
    Ok((Arc::new(routed), directory))
}

/// The Kafka client settings of cluster `name`: `--kafka-option` for every cluster, then its
/// own `--kafka-cluster-option NAME:KEY=VALUE`.
fn kafka_config(kafka: &KafkaArgs, name: &str, brokers: &str) -> anyhow::Result<KafkaConfig> {
    let mut config = KafkaConfig::new(brokers.to_string());
    let pair = |flag: &str, option: &str| -> anyhow::Result<(String, String)> {
        let (key, value) = option.split_once('=').with_context(|| {
            format!("{flag} `{option}` must be KEY=VALUE, e.g. security.protocol=SASL_SSL")
        })?;
        Ok((key.trim().to_string(), value.trim().to_string()))
    };
    for option in &kafka.kafka_options {
        config.options.push(pair("--kafka-option", option)?);
    }
    for option in &kafka.kafka_cluster_options {
        let (cluster, setting) = option.split_once(':').with_context(|| {
            format!("--kafka-cluster-option `{option}` must be CLUSTER:KEY=VALUE")
        })?;
        if cluster.trim() == name {
            config
                .options
                .push(pair("--kafka-cluster-option", setting)?);
        }
    }
    for setting in &kafka.kafka_topic_config {
        let (key, value) = setting.split_once('=').with_context(|| {
            format!(
                "--kafka-topic-config `{setting}` must be KEY=VALUE, e.g. retention.ms=604800000"
            )
        })?;
        config
            .topic_config
            .push((key.trim().to_string(), value.trim().to_string()));
    }
    config.replication_factor = kafka.kafka_replication_factor;
    Ok(config)
}

/// The roles the gRPC services call.
struct Roles {
    admin: TableAdmin,
    writer: Writer,
    reader: Reader,
    /// Where reads run (scans, SQL): off the gRPC runtime.
    read_handle: tokio::runtime::Handle,
    compact: CompactApi,
    ops: OpsApi,
    access: Access,
}

/// Opens the access store, bootstraps the admin token if asked, and says loudly when anonymous
/// callers get full access.
async fn open_access(args: &SecurityArgs, catalog_uri: &str) -> anyhow::Result<Access> {
    let audit = match &args.audit_log {
        Some(path) => Audit::to_file(path).with_context(|| {
            format!(
                "cannot open the audit log {}; check the directory and permissions of --audit-log",
                path.display()
            )
        })?,
        None => Audit::to_log(),
    };
    let db = args.access_db.as_deref().unwrap_or(catalog_uri);
    let store = AccessStore::connect(db)
        .await
        .with_context(|| format!("cannot open the access tables in {db}; check --access-db"))?;
    if let Some(path) = &args.bootstrap_admin_token_file {
        bootstrap_admin(&store, path).await?;
    }
    let access = Access::open(store, args.token_file.clone(), args.allow_anonymous, audit)
        .await
        .context("cannot read tokens and grants; check --access-db")?;
    if args.allow_anonymous {
        tracing::warn!(
            "ANONYMOUS ACCESS IS ON (--allow-anonymous): calls without credentials have FULL \
             ACCESS to every table. Use it only on a private machine; see docs/security.md"
        );
    } else {
        info!(
            "authentication required: bearer tokens{}",
            if args.tls_client_ca.is_some() {
                " or client certificates"
            } else {
                ""
            }
        );
    }
    Ok(access)
}

/// Registers the token in `path` (creating one there if the file does not exist) for user
/// `admin`, and grants `admin` admin ON ALL.
async fn bootstrap_admin(store: &AccessStore, path: &Path) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let new = token::generate().map_err(anyhow::Error::msg)?;
            write_secret(path, &new.token).with_context(|| {
                format!(
                    "cannot write the bootstrap admin token to {}; check \
                     --bootstrap-admin-token-file",
                    path.display()
                )
            })?;
            info!(file = %path.display(), "generated a bootstrap admin token");
            new.token
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot read the bootstrap admin token {}", path.display())
            });
        }
    };
    let stored = token::stored_of(&text).map_err(|reason| {
        anyhow::anyhow!(
            "the bootstrap admin token in {} {reason}; delete the file to have a new one generated",
            path.display()
        )
    })?;
    let policy = store.load().await?;
    if let Some(existing) = policy.tokens.get(&stored.id) {
        if existing.user != "admin" || existing.revoked_ms.is_some() {
            anyhow::bail!(
                "the bootstrap admin token in {} is revoked or belongs to `{}`; delete the file to \
                 have a new one generated",
                path.display(),
                existing.user
            );
        }
    } else {
        store
            .insert_token(&stored, "admin", "bootstrap admin token")
            .await?;
    }
    store
        .grant(&Grant {
            privilege: Privilege::Admin,
            object: Object::All,
            grantee: Grantee::User("admin".into()),
        })
        .await?;
    Ok(())
}

/// Writes a secret readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{secret}")
}

/// Re-reads the policy every `interval` and on SIGHUP until shutdown.
async fn reload_access(access: Access, interval: std::time::Duration, shutdown: CancellationToken) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = hangup => info!("SIGHUP: reloading tokens and grants"),
        }
        if let Err(e) = access.reload().await {
            tracing::warn!("cannot reload tokens and grants (the previous policy stays): {e}");
        }
    }
}

/// The server's TLS settings, if --tls-cert is given.
fn tls_config(args: &SecurityArgs) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |path: &Path, flag: &str| {
        std::fs::read(path)
            .with_context(|| format!("cannot read {flag} {}; give a PEM file", path.display()))
    };
    let identity =
        tonic::transport::Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?);
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &args.tls_client_ca {
        config = config
            .client_ca_root(tonic::transport::Certificate::from_pem(read(
                ca,
                "--tls-client-ca",
            )?))
            // Clients may authenticate with a token instead of a certificate.
            .client_auth_optional(true);
    }
    info!(mutual = args.tls_client_ca.is_some(), "gRPC over TLS");
    Ok(Some(config))
}

/// The RESP endpoint's TLS, if --tls-cert is given: the gRPC server's certificate and key,
/// and with --tls-client-ca optional client certificates (a client may send AUTH instead).
fn resp_tls_acceptor(args: &SecurityArgs) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let pem_error = |flag: &str, path: &Path, e: rustls::pki_types::pem::Error| {
        anyhow::anyhow!(
            "cannot read {flag} {} for the RESP endpoint: {e}; give a PEM file",
            path.display()
        )
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| pem_error("--tls-cert", cert, e))?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("--tls-key", key, e))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS for the RESP endpoint")?;
    let builder = match &args.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| pem_error("--tls-client-ca", ca, e))?
            {
                roots
                    .add(c.map_err(|e| pem_error("--tls-client-ca", ca, e))?)
                    .with_context(|| {
                        format!(
                            "--tls-client-ca {}: not a usable CA certificate",
                            ca.display()
                        )
                    })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .with_context(|| {
                format!(
                    "--tls-client-ca {}: cannot verify clients with it",
                    ca.display()
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, private).context(
        "--tls-cert and --tls-key do not make a usable TLS identity for the RESP endpoint",
    )?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
        config,
    ))))
}

async fn serve_grpc(
    listener: TcpListener,
    roles: Roles,
    tls: Option<tonic::transport::ServerTlsConfig>,
    max_request_bytes: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use tonic::service::interceptor::InterceptedService;
    let Roles {
        admin,
        writer,
        reader,
        read_handle,
        compact,
        ops,
        access,
    } = roles;
    let auth = Authenticator::new(access.clone());
    let flight = FlightApi::new(reader.clone(), read_handle.clone(), access.clone())
        .map_err(|e| anyhow::anyhow!("cannot set up the Arrow Flight service: {e}"))?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<TableAdminServiceServer<AdminApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the gRPC reflection service")?;
    // Nagle's algorithm on accepted connections (tonic sets TCP_NODELAY only on listeners it
    // binds itself) held small responses back for the client's delayed ACK: ~40 ms per RPC.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |accepted| {
            accepted.inspect(|stream| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!("cannot set TCP_NODELAY on a gRPC connection: {e}");
                }
            })
        },
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .context("cannot set up TLS; check --tls-cert, --tls-key and --tls-client-ca")?;
    }
    // Health and reflection answer without credentials; every unitable service authenticates.
    builder
        .add_service(health)
        .add_service(reflection)
        .add_service(InterceptedService::new(
            TableAdminServiceServer::new(AdminApi::new(
                admin,
                writer.clone(),
                reader.clone(),
                compact.clone(),
                access.clone(),
            )),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            WriteServiceServer::new(WriteApi::new(writer, access.clone()))
                .max_decoding_message_size(max_request_bytes),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            ReadServiceServer::new(ReadApi::new(
                reader.clone(),
                read_handle.clone(),
                access.clone(),
            )),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            FlightServiceServer::new(flight),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            CompactionServiceServer::new(compact),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            OpsServiceServer::new(ops),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            AccessServiceServer::new(AccessApi::new(access)),
            auth,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .context("the gRPC server failed")
}

async fn serve_http(
    listener: TcpListener,
    metrics: PrometheusHandle,
    console: Console,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(console::router(console));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the HTTP server failed")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
