//! Command-line definitions and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{client, serve};

/// unitable: one table, two stores. A changelog for streaming reads and an Iceberg table for
/// batch reads, written together and read by mode.
#[derive(Debug, Parser)]
#[command(name = "unitable", version, about, long_about = None)]
pub struct Cli {
    /// gRPC address of the unitable server the client commands talk to.
    #[arg(
        long,
        global = true,
        env = "UNITABLE_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub server: String,

    /// Bearer token the client commands authenticate with (from `unitable token create`, or
    /// the server's --bootstrap-admin-token-file).
    #[arg(long, global = true, env = "UNITABLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM file of the CA that signed the server's certificate; needs an https:// --server.
    #[arg(long, global = true, env = "UNITABLE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for mutual TLS (with --tls-client-key).
    #[arg(
        long,
        global = true,
        env = "UNITABLE_TLS_CLIENT_CERT",
        requires = "tls_client_key"
    )]
    pub tls_client_cert: Option<PathBuf>,

    /// PEM private key of --tls-client-cert.
    #[arg(
        long,
        global = true,
        env = "UNITABLE_TLS_CLIENT_KEY",
        requires = "tls_client_cert"
    )]
    pub tls_client_key: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (embedded defaults: SQLite catalog, local warehouse, local changelog).
    Serve(Box<ServeArgs>),
    /// Create, list, describe, alter and drop tables.
    #[command(subcommand)]
    Table(TableCommand),
    /// Write rows from a file or standard input (JSON lines, CSV or Parquet).
    Write(WriteArgs),
    /// Read a table: an Iceberg snapshot (the latest, by id or time), or fresh (every
    /// acknowledged write).
    Scan(ScanArgs),
    /// Follow a table's changes from the changelog (from earliest, latest, a snapshot, a time
    /// or offsets).
    Subscribe(SubscribeArgs),
    /// Run a SQL query over tables named `namespace.table`.
    Sql(SqlArgs),
    /// Look rows up by primary key: the latest values, including writes not yet committed.
    Lookup(LookupArgs),
    /// Join entity rows (keys and a time each) with feature columns as of each row's time,
    /// exact to the changelog record: a point-in-time training set.
    TrainingSet(TrainingSetArgs),
    /// Compact a table now: apply deletes, merge small files, expire snapshots, remove orphans.
    Compact(CompactArgs),
    /// Grant a privilege: `grant read|write|admin ON TABLE ns.t|NAMESPACE ns|ALL TO USER|GROUP
    /// NAME`.
    Grant(GrantArgs),
    /// Revoke a grant (same words as `grant`).
    Revoke(GrantArgs),
    /// List grants; with NAME, only those naming that user, group, table or namespace.
    Grants {
        /// A user, group, table or namespace.
        name: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Create, revoke and list bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Add users to groups and remove them.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Show who the server thinks you are.
    Whoami,
    /// Show a table's consumer groups: members, partitions, positions and lag.
    #[command(subcommand)]
    ConsumerGroup(ConsumerGroupCommand),
    /// Operate a running server: `admin log-level [DIRECTIVES --for 10m | --reset]`.
    #[command(subcommand)]
    Admin(client::ops::AdminCommand),
    /// Feed a table from a Debezium (CDC) topic, exactly once: `ingest start|stop|status`.
    #[command(subcommand)]
    Ingest(client::ingest::IngestCommand),
    /// Check a snapshot against its changelog: replay the changelog up to the snapshot's
    /// offsets and compare the rows by key (missing, extra, wrong); exit 1 on a difference.
    Verify(client::verify::VerifyArgs),
}

/// `unitable consumer-group ...`
#[derive(Debug, Subcommand)]
pub enum ConsumerGroupCommand {
    /// List a table's consumer groups with their generation, member count and lag.
    List {
        /// NAMESPACE.TABLE
        table: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Show one consumer group: members and their partitions, and per partition the committed
    /// position, the high watermark, the lag and the owner.
    Describe {
        /// NAMESPACE.TABLE
        table: String,
        /// The group.
        group: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

/// `unitable grant|revoke` words: PRIVILEGE ON TABLE|NAMESPACE NAME|ALL TO USER|GROUP NAME.
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// read, write or admin, then ON TABLE NS.T | ON NAMESPACE NS | ON ALL, then TO USER NAME |
    /// TO GROUP NAME.
    #[arg(required = true, num_args = 1..)]
    pub words: Vec<String>,
}

/// `unitable token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token for USER; it is printed once (only its hash is kept).
    Create {
        /// The user the token authenticates as.
        user: String,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a token by id (the 12 hex digits after `ut_`), or by the token itself.
    Revoke {
        /// Token id or token. (Not named `token`: that is the global --token flag's id.)
        #[arg(value_name = "ID")]
        token_id: String,
    },
    /// Offline, no server: generate a token for USER, append its hashed line to the file a
    /// server reads with --token-file (created mode 0600), and print the token once.
    FileAdd {
        /// The user the token authenticates as.
        user: String,
        /// The token file.
        #[arg(long)]
        token_file: PathBuf,
    },
    /// List tokens (ids, users, times; never the secrets).
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

/// `unitable group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Add USER to GROUP.
    Add {
        /// The group.
        group: String,
        /// The user.
        user: String,
    },
    /// Remove USER from GROUP.
    Remove {
        /// The group.
        group: String,
        /// The user.
        user: String,
    },
}

/// `unitable lookup` flags.
#[derive(Debug, Args)]
pub struct LookupArgs {
    /// NAMESPACE.TABLE
    pub table: String,
    /// A key as a JSON object of the primary-key columns, e.g. '{"id":42}' (repeatable).
    #[arg(long)]
    pub key: Vec<String>,
    /// Read more keys from this file, one JSON object per line (`-` for standard input).
    #[arg(long)]
    pub keys_file: Option<String>,
    /// Columns to return, in order (default: all).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Look up in this snapshot id alone instead of the latest data.
    #[arg(long)]
    pub snapshot: Option<i64>,
    /// Look up the rows as they were at this time, exact to the changelog record (RFC 3339,
    /// e.g. 2024-05-01T09:30:00.250Z, or milliseconds since the epoch).
    #[arg(long)]
    pub as_of: Option<String>,
    /// Look up the rows as they were at these changelog positions (exclusive end offsets,
    /// `PARTITION:OFFSET,...` such as `0:120,1:98`; every partition a key lives in).
    #[arg(long)]
    pub as_of_offsets: Option<String>,
    /// Accept an answer up to this old (e.g. 100ms): every write acknowledged at least this
    /// long before the lookup is reflected, and the server needs no changelog round trip
    /// while its last high-watermark read is that recent. 0 insists on every acknowledged
    /// write. Default: the server's --lookup-max-staleness. Not with the --as-of flags.
    #[arg(long, value_parser = parse_duration)]
    pub max_staleness: Option<Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = LookupFormat::Jsonl)]
    pub format: LookupFormat,
}

/// `unitable training-set` flags.
#[derive(Debug, Args)]
pub struct TrainingSetArgs {
    /// Entity rows from a file: Parquet (.parquet), CSV with a header (.csv) or Arrow IPC
    /// (.arrow, .ipc), with the feature tables' key columns and the time column.
    #[arg(long)]
    pub entities: Option<String>,
    /// Entity rows from a unitable table instead (its rows now).
    #[arg(long)]
    pub entities_table: Option<String>,
    /// The entity rows' time column: int64 milliseconds since the epoch, or a timestamp.
    #[arg(long)]
    pub timestamp_column: String,
    /// A feature as NAMESPACE.TABLE.COLUMN (repeatable).
    #[arg(long = "feature", required = true)]
    pub features: Vec<String>,
    /// Serve a value only if the change that set it is at most this old at the row's time
    /// (e.g. 1h).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ScanFormat::Jsonl)]
    pub format: ScanFormat,
    /// Write to this file instead of standard output (required for parquet).
    #[arg(long)]
    pub output: Option<String>,
}

/// Output formats of `unitable lookup`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LookupFormat {
    /// One JSON object per found row, in key order.
    Jsonl,
}

/// `unitable scan` flags.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// NAMESPACE.TABLE
    pub table: String,
    /// Read this snapshot id.
    #[arg(long)]
    pub snapshot: Option<i64>,
    /// Read the snapshot current at this time (RFC 3339, e.g. 2024-05-01T09:30:00Z).
    #[arg(long)]
    pub as_of: Option<String>,
    /// `snapshot`: an Iceberg snapshot. `fresh`: the latest snapshot merged with the changelog
    /// tail, reflecting every write acknowledged before the scan.
    #[arg(long, value_enum, default_value_t = ScanMode::Snapshot)]
    pub mode: ScanMode,
    /// Fresh mode: serve the snapshot alone when the oldest write it lacks is at most this old
    /// (e.g. 5s).
    #[arg(long, value_parser = parse_duration)]
    pub max_staleness: Option<Duration>,
    /// Columns to return, in order (default: all).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Only rows for which this SQL expression is true, e.g. "amount > 10 AND region = 'eu'".
    #[arg(long = "where")]
    pub filter: Option<String>,
    /// Stop after this many rows.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ScanFormat::Jsonl)]
    pub format: ScanFormat,
    /// Write to this file instead of standard output (required for parquet).
    #[arg(long)]
    pub output: Option<String>,
}

/// Read modes of `unitable scan`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ScanMode {
    /// An Iceberg snapshot.
    Snapshot,
    /// The latest snapshot plus every acknowledged write after it.
    Fresh,
}

/// `unitable subscribe` flags.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// NAMESPACE.TABLE
    pub table: String,
    /// Where to start: earliest, latest, snapshot, snapshot:ID, time:RFC3339 or
    /// offsets:P=O,P=O (unlisted partitions start at the earliest).
    #[arg(long, default_value = "latest")]
    pub from: String,
    /// Columns to return (the key columns always come along; default: all).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Only changes whose row makes this SQL expression true; an upsert that fails it arrives
    /// as a delete of its key, deletes always arrive.
    #[arg(long = "where")]
    pub filter: Option<String>,
    /// Stop after this many changes (default: follow until interrupted).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Read only these changelog partitions (e.g. 0,2: this worker's share; others read the
    /// rest). Default: all. Not with --from snapshot.
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<u32>,
    /// Output format: one JSON object per change, {"op", "key", "row", "partition", "offset",
    /// "timestamp"}.
    #[arg(long, value_enum, default_value_t = SubscribeFormat::Jsonl)]
    pub format: SubscribeFormat,
    /// Read as a member of this consumer group: the server assigns the partitions and keeps
    /// the positions; each printed batch is committed; a rebalance reconnects. --from applies
    /// to partitions the group has no position for.
    #[arg(long, env = "UNITABLE_CONSUMER_GROUP")]
    pub group: Option<String>,
    /// With --group: this member's id, stable across restarts (default: made up by the
    /// server, kept across reconnects of this command).
    #[arg(long, env = "UNITABLE_CONSUMER_MEMBER", requires = "group")]
    pub member: Option<String>,
    /// With --group: the server commits each batch as it sends it (at-most-once) instead of
    /// this command committing after printing it (at-least-once).
    #[arg(long, requires = "group")]
    pub auto_commit: bool,
}

/// Output formats of `unitable subscribe`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SubscribeFormat {
    /// One JSON object per change.
    Jsonl,
}

/// `unitable sql` flags.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// One SQL query; name tables as namespace.table.
    pub query: String,
    /// `snapshot`: each table's latest snapshot. `fresh`: every acknowledged write.
    #[arg(long, value_enum, default_value_t = ScanMode::Snapshot)]
    pub mode: ScanMode,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ScanFormat::Table)]
    pub format: ScanFormat,
    /// Write to this file instead of standard output (required for parquet).
    #[arg(long)]
    pub output: Option<String>,
}

/// Output formats of `unitable scan`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ScanFormat {
    /// One JSON object per row.
    Jsonl,
    /// Comma-separated with a header row.
    Csv,
    /// An aligned text table (holds the rows in memory to size the columns).
    Table,
    /// A Parquet file (needs --output).
    Parquet,
}

/// `unitable write` flags.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// NAMESPACE.TABLE
    pub table: String,
    /// The input file; `-` reads standard input.
    #[arg(long, default_value = "-")]
    pub file: String,
    /// Input format (default: from the file extension, else jsonl).
    #[arg(long, value_enum)]
    pub format: Option<InputFormat>,
    /// What the rows do: insert, upsert, or delete (deletes need only the key columns).
    #[arg(long, value_enum, default_value_t = WriteOpArg::Upsert)]
    pub op: WriteOpArg,
    /// Rows per write request.
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: usize,
    /// `snapshot`: return once an Iceberg snapshot covers the rows (prints its id).
    #[arg(long, value_enum)]
    pub wait: Option<WaitArg>,
}

/// Input formats of `unitable write`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated with a header row naming the columns; empty cells are null.
    Csv,
    /// A Parquet file.
    Parquet,
}

/// Write operations.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum WriteOpArg {
    /// Append rows (append-only tables; on keyed tables same as upsert).
    Insert,
    /// Insert or replace by primary key.
    Upsert,
    /// Delete by primary key.
    Delete,
}

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum WaitArg {
    /// An Iceberg snapshot covering the write.
    Snapshot,
}

/// Flags of `unitable serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory for the embedded catalog, warehouse and changelog.
    #[arg(long, env = "UNITABLE_DATA_DIR", default_value = "./unitable-data")]
    pub data_dir: PathBuf,

    /// Address of the gRPC API.
    #[arg(long, env = "UNITABLE_GRPC_ADDR", default_value = "127.0.0.1:7070")]
    pub grpc_addr: String,

    /// Address of the HTTP endpoints (/metrics in Prometheus text format, /healthz).
    #[arg(long, env = "UNITABLE_HTTP_ADDR", default_value = "127.0.0.1:7071")]
    pub http_addr: String,

    /// Serve LOOKUPs over the Redis protocol (RESP2) on this address too, e.g. 127.0.0.1:6380:
    /// `GET shop.users:42` returns the row of key 42 as JSON, `HGET`/`HMGET`/`HGETALL` its
    /// columns, `MGET` many (docs/resp.md). Read-only; over TLS with --tls-cert. Callers AUTH
    /// with a unitable token (or show a client certificate with --tls-client-ca) unless
    /// --allow-anonymous. Off by default.
    #[arg(long, env = "UNITABLE_RESP_ADDR")]
    pub resp_addr: Option<String>,

    #[command(flatten)]
    pub catalog: CatalogArgs,

    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// How often the committer turns changelog records into an Iceberg snapshot (e.g. 1s, 500ms).
    #[arg(long, env = "UNITABLE_COMMIT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub commit_interval: Duration,

    /// Most changelog records one commit takes in (bounds the committer's memory); a larger
    /// backlog is committed in several snapshots back to back.
    #[arg(long, env = "UNITABLE_COMMIT_MAX_RECORDS", default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub commit_max_records: u64,

    /// Shortest time between two key-index checkpoints of a table (0s writes one whenever it
    /// is due). A committer saves its primary-key index in the table's location when catching
    /// up from the last checkpoint would cost more than writing a new one, and after its final
    /// commit on a stop or hand-over; the next owner loads it instead of reading every data
    /// file (docs/writer.md).
    #[arg(long, env = "UNITABLE_INDEX_CHECKPOINT_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub index_checkpoint_interval: Duration,

    /// Neither write nor load key-index checkpoints: every committer start rebuilds the index
    /// from the table's data files.
    #[arg(long, env = "UNITABLE_NO_INDEX_CHECKPOINTS")]
    pub no_index_checkpoints: bool,

    /// How long a node's lease on a table's committer lasts without renewal (renewed every
    /// third of it). Serve nodes sharing a catalog split the tables' commits between them; a
    /// dead node's tables are taken over by the live ones after at most this plus a third.
    #[arg(long, env = "UNITABLE_COMMITTER_LEASE", default_value = "10s", value_parser = parse_duration)]
    pub committer_lease: Duration,

    /// This node's id among the serve nodes sharing the catalog (default: host name and gRPC
    /// port). It must be unique among live nodes and should stay the same across restarts,
    /// so that a restarted node takes its tables back at once.
    #[arg(long, env = "UNITABLE_NODE_ID")]
    pub node_id: Option<String>,

    /// How long a consumer group member outlives the last renewal by the node serving its
    /// stream (renewed every tenth of it, at most every second): a member whose node died
    /// leaves its group after this, and a member cut off by a rebalance keeps its place this
    /// long for its reconnect. Lag metrics are refreshed every third of it.
    #[arg(long, env = "UNITABLE_CONSUMER_GROUP_SESSION", default_value = "10s", value_parser = parse_duration)]
    pub consumer_group_session: Duration,

    /// How often the web console's freshness history samples every table (snapshot, records
    /// not yet committed, age of the oldest); the last 360 samples of each table are kept in
    /// memory (an hour at the default).
    #[arg(long, env = "UNITABLE_CONSOLE_SAMPLE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub console_sample_interval: Duration,

    /// Memory shared by the operators of all running SQL queries (sorts, aggregations and
    /// joins), e.g. 512MiB, 2GiB. Sorts and aggregations spill to temporary files past it; a
    /// query that still does not fit fails with RESOURCE_EXHAUSTED.
    #[arg(long, env = "UNITABLE_SQL_MEMORY_LIMIT", default_value = "1GiB", value_parser = parse_bytes)]
    pub sql_memory_limit: usize,

    /// Memory each training set (the TrainingSet call, `unitable training-set`) may hold
    /// while it sorts its entity rows by time and its answer back into request order, e.g.
    /// 256MiB, 2GiB. Past it the sorts spill sorted runs to temporary files (the system's
    /// temporary directory, TMPDIR), so a set larger than memory is answered from disk. At
    /// least 8MiB.
    #[arg(long, env = "UNITABLE_TRAINING_SET_MEMORY", default_value = "512MiB", value_parser = parse_training_set_memory)]
    pub training_set_memory: usize,

    /// Memory shared by the LOOKUP states of all tables (key index plus the changelog tail
    /// after the indexed snapshot), e.g. 512MiB, 4GiB. Past it the least recently looked-up
    /// tables' states are dropped and rebuilt on their next lookup; a table whose state alone
    /// is larger fails its lookups with RESOURCE_EXHAUSTED.
    #[arg(long, env = "UNITABLE_LOOKUP_MEMORY_LIMIT", default_value = "2GiB", value_parser = parse_bytes)]
    pub lookup_memory_limit: usize,

    /// Memory LOOKUP may keep of decoded data-file rows, all tables together, e.g. 256MiB,
    /// 4GiB; 0 turns the cache off. A lookup decodes the block of rows around each key it reads
    /// from a data file (one Parquet page per column) and keeps it here, so later lookups of
    /// keys in the same block are served from memory. Hits and misses are in /metrics
    /// (unitable_lookup_cache_hits_total, unitable_lookup_cache_misses_total).
    #[arg(long, env = "UNITABLE_LOOKUP_CACHE_MEMORY", default_value = "512MiB", value_parser = parse_bytes)]
    pub lookup_cache_memory: usize,

    /// Whether LOOKUP warms its cache: a table's data files are decoded into it in the
    /// background when the table's lookup state is built (its first lookup) and whenever a
    /// new snapshot brings files in (commits, compactions), as long as they fit in 80% of
    /// --lookup-cache-memory, all tables together. Lookups of such tables then read no
    /// Parquet page. `false` caches only the blocks that lookups read.
    #[arg(long, env = "UNITABLE_LOOKUP_CACHE_WARM", default_value_t = true, action = clap::ArgAction::Set)]
    pub lookup_cache_warm: bool,

    /// How old a fresh LOOKUP's answer may be when the request does not say (RESP GET/MGET
    /// and HGET never do; gRPC and the SDK set max_staleness_ms per request), e.g. 100ms, 1s.
    /// 0 (the default): every write acknowledged before the lookup is reflected, which costs a
    /// high-watermark read of each partition the keys live in per lookup (with Kafka, a
    /// round trip to the partition's leader). More: every write acknowledged at least this
    /// long before the lookup is reflected, and lookups wait for the last watermark read while
    /// it is that recent (read again in the background as it ages).
    #[arg(long, env = "UNITABLE_LOOKUP_MAX_STALENESS", default_value = "0ms", value_parser = parse_duration)]
    pub lookup_max_staleness: Duration,

    /// Memory the committer's primary-key index of each table may keep (a limit per table),
    /// e.g. 512MiB, 2GiB. Past it the index spills sorted runs to --index-spill-dir and reads
    /// them back one 4 KiB block per lookup. Default: no limit (about 60-70 bytes per key in
    /// memory).
    #[arg(long, env = "UNITABLE_INDEX_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub index_memory_limit: Option<usize>,

    /// Local directory the primary-key indexes spill to, one subdirectory per table (default:
    /// <data-dir>/index-spill). Spill files are unlinked once created, so their space is freed
    /// when a committer stops or the process dies.
    #[arg(long, env = "UNITABLE_INDEX_SPILL_DIR")]
    pub index_spill_dir: Option<PathBuf>,

    /// Largest gRPC request accepted, in bytes; bigger writes fail with OUT_OF_RANGE
    /// (split them, or use WriteStream).
    #[arg(long, env = "UNITABLE_MAX_REQUEST_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// How often background compaction looks at every table (e.g. 1m, 30s); 0 turns it off
    /// (the Compact RPC and `unitable compact` still work).
    #[arg(long, env = "UNITABLE_COMPACTION_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub compaction_interval: Duration,

    /// Tables compacted at the same time (each on the compactor's own threads).
    #[arg(long, env = "UNITABLE_COMPACTION_CONCURRENCY", default_value_t = 1)]
    pub compaction_concurrency: usize,

    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Authentication, authorization, TLS and audit (docs/security.md).
#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// Let calls without credentials through as `anonymous`, with FULL ACCESS to every table.
    /// For the local quickstart only; never on a shared network.
    #[arg(long, env = "UNITABLE_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Database for tokens, grants and groups (sqlite://PATH or postgres://...). Default: the
    /// catalog's database; required with a REST catalog.
    #[arg(long, env = "UNITABLE_ACCESS_DB")]
    pub access_db: Option<String>,

    /// Bootstrap admin: if PATH exists, the token in it is registered for user `admin`; if not,
    /// a new token is generated and written there (mode 0600). Either way `admin` is granted
    /// `admin ON ALL`.
    #[arg(long, env = "UNITABLE_BOOTSTRAP_ADMIN_TOKEN_FILE")]
    pub bootstrap_admin_token_file: Option<PathBuf>,

    /// Also accept the tokens listed in this file (lines `USER ID SALT HASH`, made by `unitable
    /// token file-add`); re-read with the policy, so deleting a line revokes its token.
    #[arg(long, env = "UNITABLE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// How often the policy (tokens, grants, groups) is re-read from the database; SIGHUP
    /// re-reads it at once.
    #[arg(long, env = "UNITABLE_ACCESS_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub access_reload_interval: Duration,

    /// Append audit lines (JSON) to this file instead of the server log.
    #[arg(long, env = "UNITABLE_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,

    /// PEM certificate (chain) for serving gRPC over TLS (with --tls-key).
    #[arg(long, env = "UNITABLE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "UNITABLE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA whose client certificates are accepted (mutual TLS); the user is the
    /// certificate's first DNS subject-alternative name. Clients may still use tokens instead.
    #[arg(long, env = "UNITABLE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// `unitable compact` flags.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// NAMESPACE.TABLE
    pub table: String,
    /// Show the plan without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where table definitions and data files live.
#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Iceberg catalog: sqlite://PATH, postgres://USER:PASS@HOST/DB or http(s)://REST-ENDPOINT.
    /// Default: sqlite://DATA_DIR/catalog.db.
    #[arg(long, env = "UNITABLE_CATALOG")]
    pub catalog: Option<String>,

    /// Warehouse for new tables: file:///ABS/PATH, s3://BUCKET/PREFIX or memory://NAME.
    /// Default: file://DATA_DIR/warehouse.
    #[arg(long, env = "UNITABLE_WAREHOUSE")]
    pub warehouse: Option<String>,
}

/// S3-compatible object storage settings (AWS_* environment variables are also honoured).
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// S3 endpoint URL, for S3-compatible services (MinIO, moto, ...).
    #[arg(long, env = "UNITABLE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, env = "UNITABLE_S3_REGION")]
    pub s3_region: Option<String>,

    /// S3 access key id.
    #[arg(long, env = "UNITABLE_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,

    /// S3 secret access key.
    #[arg(long, env = "UNITABLE_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
}

/// Kafka changelog settings.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (host:port,...). Absent: the local changelog in DATA_DIR.
    #[arg(long, env = "UNITABLE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Extra Kafka client setting KEY=VALUE (repeatable), e.g. security.protocol=SASL_SSL,
    /// sasl.mechanisms=SCRAM-SHA-512, sasl.username=U, sasl.password=P, ssl.ca.location=PEM.
    /// Never logged; prefer the environment variable for secrets.
    #[arg(
        long = "kafka-option",
        env = "UNITABLE_KAFKA_OPTIONS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub kafka_options: Vec<String>,

    /// Replicas per partition of the changelog topics this server creates (a table's
    /// `unitable.changelog.replication-factor` property overrides it). Default: the smaller of
    /// 3 and the cluster's broker count.
    #[arg(long, env = "UNITABLE_KAFKA_REPLICATION_FACTOR", value_parser = clap::value_parser!(i32).range(1..))]
    pub kafka_replication_factor: Option<i32>,

    /// Topic-level setting KEY=VALUE of the changelog topics this server creates (repeatable),
    /// e.g. retention.ms=604800000, min.insync.replicas=2. Table properties
    /// (`unitable.changelog.*`) override them.
    #[arg(
        long = "kafka-topic-config",
        env = "UNITABLE_KAFKA_TOPIC_CONFIG",
        value_delimiter = ';'
    )]
    pub kafka_topic_config: Vec<String>,

    /// A named Kafka cluster NAME=BOOTSTRAP (repeatable), e.g. eu=kafka-eu-1:9092. Tables are
    /// created on the default cluster or on the one their `unitable.changelog.cluster`
    /// property names, and `table move-changelog` moves them between clusters. Every server
    /// sharing the catalog needs the same clusters. `--kafka-brokers` is the cluster `default`;
    /// without it the embedded log is the cluster `local`.
    #[arg(
        long = "kafka-cluster",
        env = "UNITABLE_KAFKA_CLUSTERS",
        value_delimiter = ';'
    )]
    pub kafka_clusters: Vec<String>,

    /// A Kafka client setting for one named cluster, CLUSTER:KEY=VALUE (repeatable), over the
    /// `--kafka-option` settings every cluster gets. Never logged.
    #[arg(
        long = "kafka-cluster-option",
        env = "UNITABLE_KAFKA_CLUSTER_OPTIONS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub kafka_cluster_options: Vec<String>,

    /// The cluster new tables go to, and where tables that name none live (default: `default`
    /// with --kafka-brokers, else `local`).
    #[arg(long, env = "UNITABLE_DEFAULT_CLUSTER")]
    pub default_cluster: Option<String>,
}

/// `unitable table ...`
#[derive(Debug, Subcommand)]
pub enum TableCommand {
    /// Create a table and its changelog topic.
    Create(CreateArgs),
    /// List tables, optionally of one namespace.
    List {
        /// Only this namespace.
        namespace: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Show a table's schema, primary key, buckets, topic, snapshot and properties.
    Describe {
        /// NAMESPACE.TABLE
        table: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Drop a table, its data files and its changelog topic.
    Drop {
        /// NAMESPACE.TABLE
        table: String,
        /// Keep data and metadata files in the warehouse.
        #[arg(long)]
        keep_data: bool,
    },
    /// Add a nullable column.
    AddColumn {
        /// NAMESPACE.TABLE
        table: String,
        /// NAME:TYPE (added columns are nullable).
        #[arg(long)]
        column: String,
    },
    /// Set or remove table properties, and rename, drop, widen, make optional or move columns
    /// (metadata-only commits; field ids are kept, so old data files and changelog records
    /// still read). Column changes apply in this order: renames, widens, make-optional, moves,
    /// drops; primary-key columns cannot change.
    Alter {
        /// NAMESPACE.TABLE
        table: String,
        /// Property KEY=VALUE to set (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Property KEY to remove (repeatable; a key that is not set is ignored).
        #[arg(long = "unset", value_name = "KEY")]
        unset: Vec<String>,
        /// Rename column OLD to NEW (repeatable).
        #[arg(long = "rename-column", value_name = "OLD=NEW")]
        rename: Vec<String>,
        /// Widen column C to TYPE: int32 -> int64, float32 -> float64, decimal(P,S) ->
        /// decimal(P2,S) with P2 > P (repeatable).
        #[arg(long = "widen-column", value_name = "C:TYPE")]
        widen: Vec<String>,
        /// Allow nulls in required column C (repeatable).
        #[arg(long = "make-optional", value_name = "C")]
        make_optional: Vec<String>,
        /// Move column C first (`C=first`) or after column B (`C=after:B`) (repeatable).
        #[arg(long = "move-column", value_name = "C=first|C=after:B")]
        move_column: Vec<String>,
        /// Drop column C: it is no longer read; its values stay in old data files (repeatable).
        #[arg(long = "drop-column", value_name = "C")]
        drop: Vec<String>,
    },
    /// Move a table's changelog to another named Kafka cluster (`serve --kafka-cluster`):
    /// the committer commits what the old topic holds, then switches the table to a new topic
    /// on the target. Writes pause (UNAVAILABLE, retried by clients) until it has; readers and
    /// consumer groups go on across the move.
    MoveChangelog {
        /// NAMESPACE.TABLE
        table: String,
        /// The target cluster.
        #[arg(long, value_name = "CLUSTER")]
        to: Option<String>,
        /// Give up a move that has not switched yet.
        #[arg(long, conflicts_with = "to")]
        abort: bool,
        /// Return once the move is requested instead of waiting for the switch.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the switch.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Where a table's changelog records are on the Kafka clusters, from given positions on:
    /// the topic and offset range per generation, for Kafka clients reading across moves.
    Positions {
        /// NAMESPACE.TABLE
        table: String,
        /// Positions P:O,... as unitable gives them out (STREAM next_offsets, snapshot
        /// summaries); with --kafka-topic, Kafka offsets of that topic. None: from the oldest
        /// record of each partition.
        #[arg(long)]
        offsets: Option<String>,
        /// A Kafka topic of the table (any generation) whose offsets --offsets gives.
        #[arg(long)]
        kafka_topic: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

/// `unitable table create` flags.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// NAMESPACE.TABLE (lower-case letters, digits, `_`).
    pub table: String,
    /// NAME:TYPE[!] (repeatable; `!` = not null). TYPE: bool, int32, int64, float32, float64,
    /// decimal(P,S), string, binary, date, timestamp, timestamptz.
    #[arg(long = "column", required = true)]
    pub columns: Vec<String>,
    /// Primary-key columns in key order (C1[,C2...]), made not null; none = append-only table.
    #[arg(long, value_delimiter = ',')]
    pub primary_key: Vec<String>,
    /// Buckets = changelog partitions (default 4).
    #[arg(long)]
    pub buckets: Option<u32>,
    /// Partition field (repeatable or comma-separated): col, identity(col), year(col),
    /// month(col), day(col), hour(col), bucket[N](col), truncate[W](col).
    #[arg(long, value_delimiter = ',')]
    pub partition_by: Vec<String>,
    /// Table property KEY=VALUE (repeatable).
    #[arg(long = "property")]
    pub properties: Vec<String>,
    /// Changelog record format: json-v1 (JSON values) or avro-v1 (Avro values in the
    /// Confluent framing, schemas at the HTTP port's /schemas/ids/ID); keys are JSON in both.
    #[arg(long, value_name = "FORMAT", default_value = "json-v1")]
    pub changelog_format: String,
}

/// Output formats of client commands.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// Parses `500ms`, `1s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 1s, 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    // Finite and at most ten years: longer values would overflow deadline arithmetic
    // (`Instant + Duration` panics) and are always a typo.
    const MAX_SECS: f64 = 10.0 * 365.0 * 86_400.0;
    if !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!(
            "`{text}` is out of range (at most 10 years, e.g. 87600h)"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{text}`: {e}"))
}

/// Parses a byte size: a bare number of bytes, or a number with `KiB`, `MiB`, `GiB` (also
/// `K`, `M`, `G`, `KB`, `MB`, `GB`: powers of 1024 all).
/// `--training-set-memory`: a size of at least 8 MiB (its sorts merge spilled runs within it).
fn parse_training_set_memory(text: &str) -> Result<usize, String> {
    let bytes = parse_bytes(text)?;
    if bytes < 8 << 20 {
        return Err(format!(
            "{text} is too little for a training set's sorts: give at least 8MiB"
        ));
    }
    Ok(bytes)
}

pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 512MiB or 2GiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use KiB, MiB or GiB)"
            ));
        }
    };
    let bytes = value * scale;
    if !(1.0..=usize::MAX as f64).contains(&bytes) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes as usize)
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let log_level = init_tracing();
            match runtime.block_on(serve::run(*args, log_level)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        command => {
            let conn = client::Connection {
                server: cli.server,
                token: cli.token,
                tls_ca: cli.tls_ca,
                tls_client_cert: cli.tls_client_cert,
                tls_client_key: cli.tls_client_key,
            };
            runtime.block_on(run_client(&conn, command))
        }
    }
}

async fn run_client(conn: &client::Connection, command: Command) -> ExitCode {
    use client::access::AccessCommand;
    match command {
        // `main` runs the server itself.
        Command::Serve(_) => ExitCode::FAILURE,
        Command::Table(cmd) => client::table::run(conn, cmd).await,
        Command::Write(args) => client::write::run(conn, args).await,
        Command::Scan(args) => client::scan::run(conn, args).await,
        Command::Subscribe(args) => client::subscribe::run(conn, args).await,
        Command::Sql(args) => client::sql::run(conn, args).await,
        Command::Lookup(args) => client::lookup::run(conn, args).await,
        Command::TrainingSet(args) => client::training::run(conn, args).await,
        Command::Compact(args) => client::compact::run(conn, args).await,
        Command::Grant(args) => client::access::run(conn, AccessCommand::Grant(args.words)).await,
        Command::Revoke(args) => client::access::run(conn, AccessCommand::Revoke(args.words)).await,
        Command::Grants { name, format } => {
            client::access::run(conn, AccessCommand::Grants { name, format }).await
        }
        Command::Token(cmd) => client::access::run(conn, AccessCommand::Token(cmd)).await,
        Command::Group(cmd) => client::access::run(conn, AccessCommand::Group(cmd)).await,
        Command::Whoami => client::access::run(conn, AccessCommand::WhoAmI).await,
        Command::ConsumerGroup(cmd) => client::groups::run(conn, cmd).await,
        Command::Admin(cmd) => client::ops::run(conn, cmd).await,
        Command::Verify(args) => client::verify::run(conn, args).await,
        Command::Ingest(cmd) => client::ingest::run(conn, cmd).await,
    }
}

/// The server's log filter: `UNITABLE_LOG` (default `info`; an invalid one falls back to
/// `info`), changeable at run time through `unitable admin log-level`.
fn init_tracing() -> crate::telemetry::log_level::LogLevel {
    let startup = std::env::var("UNITABLE_LOG").unwrap_or_else(|_| "info".to_string());
    crate::telemetry::log_level::init(&startup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("ten").unwrap_err().contains("512MiB"));
        assert!(parse_bytes("3TB").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("fast").is_err());
        // Overflowing or absurd values are errors, never panics.
        let huge = "9".repeat(400);
        assert!(parse_duration(&huge).unwrap_err().contains("out of range"));
        assert!(parse_duration(&format!("{huge}h")).is_err());
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("100000h").is_err());
        assert!(parse_bytes(&huge).unwrap_err().contains("out of range"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
