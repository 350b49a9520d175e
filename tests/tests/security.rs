//! Security (docs/security.md): authentication, grants on every RPC and read mode, SQL that
//! cannot reach an ungranted table by any query shape, live revocation, group / namespace /
//! global grants, the CLI, the audit log, and TLS + mutual TLS with a test CA.
//!
//! The servers here start without `--allow-anonymous` and with a bootstrap admin token.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};
use unitable_proto::v1::access_service_client::AccessServiceClient;
use unitable_proto::v1::compaction_service_client::CompactionServiceClient;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::stream_start::Kind;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{
    AddColumnRequest, AlterTableRequest, Column, CompactRequest, CreateTableRequest,
    CreateTokenRequest, DataType, DropTableRequest, GetTableRequest, GrantRequest, GrantSpec,
    GranteeKind, ListGrantsRequest, ListTablesRequest, ObjectKind, Privilege, QueryRequest,
    ReadMode, ReadRequest, RevokeRequest, RevokeTokenRequest, RowFormat, StreamStart,
    TableDefinition, WaitFor, WhoAmIRequest, WriteOp, WriteRequest, data_type,
};
use unitable_tests::Service;

/// Sends `authorization: Bearer TOKEN` when it has a token.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Conn = InterceptedService<Channel, Bearer>;

/// One caller: a channel plus its token (if any).
#[derive(Clone)]
struct Caller {
    name: String,
    token: Option<String>,
    conn: Conn,
}

impl Caller {
    async fn new(url: &str, name: &str, token: Option<&str>) -> Result<Self> {
        let channel = Channel::from_shared(url.to_string())?.connect().await?;
        Self::over(channel, name, token)
    }

    fn over(channel: Channel, name: &str, token: Option<&str>) -> Result<Self> {
        let header = match token {
            Some(t) => Some(format!("Bearer {t}").parse()?),
            None => None,
        };
        Ok(Self {
            name: name.to_string(),
            token: token.map(str::to_string),
            conn: InterceptedService::new(channel, Bearer(header)),
        })
    }

    fn admin(&self) -> TableAdminServiceClient<Conn> {
        TableAdminServiceClient::new(self.conn.clone())
    }
    fn writer(&self) -> WriteServiceClient<Conn> {
        WriteServiceClient::new(self.conn.clone())
    }
    fn reader(&self) -> ReadServiceClient<Conn> {
        ReadServiceClient::new(self.conn.clone())
    }
    fn access(&self) -> AccessServiceClient<Conn> {
        AccessServiceClient::new(self.conn.clone())
    }
}

/// A server with authentication on, and its bootstrap admin.
struct Secure {
    service: Service,
    admin: Caller,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

impl Secure {
    async fn start(extra: &[&str]) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let token_file = dir.join("admin.token");
        let audit = dir.join("audit.log");
        let mut args = vec![
            "--bootstrap-admin-token-file".to_string(),
            token_file.display().to_string(),
            "--audit-log".to_string(),
            audit.display().to_string(),
            "--commit-interval".to_string(),
            "200ms".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let service = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Service::start_secure(&args)
        })
        .await??;
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?;
        let admin = Caller::new(&service.grpc_url(), "admin", Some(token.trim())).await?;
        Ok(Self {
            service,
            admin,
            audit,
            _dir: tmp,
        })
    }

    /// A user with a fresh token.
    async fn user(&self, name: &str) -> Result<Caller> {
        let token = self
            .admin
            .access()
            .create_token(CreateTokenRequest {
                user: name.into(),
                description: "test".into(),
            })
            .await?
            .into_inner()
            .token;
        Caller::new(&self.service.grpc_url(), name, Some(&token)).await
    }

    async fn grant(
        &self,
        privilege: Privilege,
        object: ObjectKind,
        name: &str,
        to: &str,
    ) -> Result<()> {
        self.grant_to(privilege, object, name, GranteeKind::User, to)
            .await
    }

    async fn grant_to(
        &self,
        privilege: Privilege,
        object: ObjectKind,
        name: &str,
        kind: GranteeKind,
        to: &str,
    ) -> Result<()> {
        self.admin
            .access()
            .grant(GrantRequest {
                grant: Some(spec(privilege, object, name, kind, to)),
            })
            .await?;
        Ok(())
    }
}

fn spec(
    privilege: Privilege,
    object: ObjectKind,
    name: &str,
    kind: GranteeKind,
    to: &str,
) -> GrantSpec {
    GrantSpec {
        privilege: privilege as i32,
        object_kind: object as i32,
        object: name.into(),
        grantee_kind: kind as i32,
        grantee: to.into(),
    }
}

fn definition(table: &str, value_column: &str) -> TableDefinition {
    let column = |name: &str, kind: data_type::Kind, required: bool| Column {
        name: name.into(),
        r#type: Some(DataType {
            kind: kind as i32,
            ..DataType::default()
        }),
        required,
        ..Column::default()
    };
    TableDefinition {
        table: table.into(),
        columns: vec![
            column("id", data_type::Kind::Int64, true),
            column(value_column, data_type::Kind::String, false),
        ],
        primary_key: vec!["id".into()],
        buckets: 1,
        ..TableDefinition::default()
    }
}

async fn create(caller: &Caller, table: &str, value_column: &str) -> Result<(), Status> {
    caller
        .admin()
        .create_table(CreateTableRequest {
            definition: Some(definition(table, value_column)),
        })
        .await
        .map(|_| ())
}

fn write_request(table: &str, line: &str, wait: bool) -> WriteRequest {
    WriteRequest {
        table: table.into(),
        op: WriteOp::Upsert as i32,
        format: RowFormat::JsonLines as i32,
        rows: line.as_bytes().to_vec(),
        wait_for: if wait {
            WaitFor::Snapshot as i32
        } else {
            WaitFor::Changelog as i32
        },
        request_id: String::new(),
    }
}

async fn write(caller: &Caller, table: &str, line: &str) -> Result<(), Status> {
    let r = caller
        .writer()
        .write(write_request(table, line, true))
        .await?
        .into_inner();
    if r.rows_rejected > 0 {
        return Err(Status::internal(format!("rejected: {:?}", r.errors)));
    }
    Ok(())
}

fn read_request(table: &str, mode: ReadMode) -> ReadRequest {
    let mut r = ReadRequest {
        table: table.into(),
        mode: mode as i32,
        limit: 1,
        ..ReadRequest::default()
    };
    if mode == ReadMode::Stream {
        r.start = Some(StreamStart {
            kind: Kind::Earliest as i32,
            ..StreamStart::default()
        });
    }
    if mode == ReadMode::Lookup {
        r.limit = 0;
        r.keys = b"{\"id\":1}\n".to_vec();
        r.keys_format = RowFormat::JsonLines as i32;
    }
    r
}

/// Reads and drains the stream; the first error (at the call or in the stream) is returned.
async fn read(caller: &Caller, table: &str, mode: ReadMode) -> Result<(), Status> {
    let mut stream = caller
        .reader()
        .read(read_request(table, mode))
        .await?
        .into_inner();
    while let Some(message) = stream.next().await {
        message?;
    }
    Ok(())
}

/// Runs SQL and returns the result's Arrow IPC bytes concatenated (for "does it leak" checks).
async fn sql(caller: &Caller, sql: &str) -> Result<Vec<u8>, Status> {
    sql_in(caller, sql, ReadMode::Snapshot).await
}

async fn sql_in(caller: &Caller, sql: &str, mode: ReadMode) -> Result<Vec<u8>, Status> {
    let mut stream = caller
        .reader()
        .query(QueryRequest {
            sql: sql.into(),
            mode: mode as i32,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.next().await {
        out.extend(message?.arrow_ipc);
    }
    Ok(out)
}

/// The RPCs and read modes of the matrix, each with the privilege it needs.
#[derive(Debug, Clone, Copy)]
enum Op {
    CreateTable,
    AddColumn,
    AlterTable,
    GetTable,
    Write,
    WriteStream,
    Stream,
    Snapshot,
    Fresh,
    Lookup,
    /// The unary `Lookup` RPC.
    UnaryLookup,
    /// `TrainingSet` with a feature of the table.
    TrainingSet,
    Query,
    Compact,
    DropTable,
}

impl Op {
    fn needs(self) -> u8 {
        match self {
            Op::GetTable
            | Op::Stream
            | Op::Snapshot
            | Op::Fresh
            | Op::Lookup
            | Op::UnaryLookup
            | Op::TrainingSet
            | Op::Query => 1,
            Op::Write | Op::WriteStream => 2,
            Op::CreateTable | Op::AddColumn | Op::AlterTable | Op::Compact | Op::DropTable => 3,
        }
    }

    async fn run(self, caller: &Caller, table: &str, round: usize) -> Result<(), Status> {
        match self {
            Op::CreateTable => create(caller, table, "v").await,
            Op::AddColumn => caller
                .admin()
                .add_column(AddColumnRequest {
                    table: table.into(),
                    column: Some(Column {
                        name: format!("extra{round}"),
                        r#type: Some(DataType {
                            kind: data_type::Kind::Int64 as i32,
                            ..DataType::default()
                        }),
                        ..Column::default()
                    }),
                })
                .await
                .map(|_| ()),
            Op::AlterTable => caller
                .admin()
                .alter_table(AlterTableRequest {
                    table: table.into(),
                    set_properties: [("owner".to_string(), format!("round{round}"))].into(),
                    unset_properties: Vec::new(),
                    column_changes: Vec::new(),
                })
                .await
                .map(|_| ()),
            Op::GetTable => caller
                .admin()
                .get_table(GetTableRequest {
                    table: table.into(),
                })
                .await
                .map(|_| ()),
            Op::Write => write(caller, table, &format!("{{\"id\":{round},\"v\":\"w\"}}\n")).await,
            Op::WriteStream => {
                let messages = vec![
                    write_request(
                        table,
                        &format!("{{\"id\":{},\"v\":\"s\"}}\n", 100 + round),
                        false,
                    ),
                    WriteRequest {
                        table: String::new(),
                        op: 0,
                        format: 0,
                        rows: format!("{{\"id\":{},\"v\":\"s\"}}\n", 200 + round).into_bytes(),
                        wait_for: 0,
                        request_id: String::new(),
                    },
                ];
                caller
                    .writer()
                    .write_stream(futures::stream::iter(messages))
                    .await
                    .map(|_| ())
            }
            Op::Stream => read(caller, table, ReadMode::Stream).await,
            Op::Snapshot => read(caller, table, ReadMode::Snapshot).await,
            Op::Fresh => read(caller, table, ReadMode::Fresh).await,
            Op::Lookup => read(caller, table, ReadMode::Lookup).await,
            Op::UnaryLookup => caller
                .reader()
                .lookup(read_request(table, ReadMode::Lookup))
                .await
                .map(|_| ()),
            Op::TrainingSet => {
                let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
                    arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
                    arrow::datatypes::Field::new("at", arrow::datatypes::DataType::Int64, false),
                ]));
                let batch = arrow::array::RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        std::sync::Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                        std::sync::Arc::new(arrow::array::Int64Array::from(vec![0, i64::MAX / 4])),
                    ],
                )
                .map_err(|e| Status::internal(e.to_string()))?;
                let mut ipc = Vec::new();
                {
                    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &schema)
                        .map_err(|e| Status::internal(e.to_string()))?;
                    w.write(&batch)
                        .and_then(|()| w.finish())
                        .map_err(|e| Status::internal(e.to_string()))?;
                }
                let mut stream = caller
                    .reader()
                    .training_set(futures::stream::iter([
                        unitable_proto::v1::TrainingSetRequest {
                            entities: ipc,
                            timestamp_column: "at".into(),
                            features: vec![format!("{table}.v")],
                            ttl_ms: None,
                        },
                    ]))
                    .await?
                    .into_inner();
                while let Some(message) = stream.next().await {
                    message?;
                }
                Ok(())
            }
            Op::Query => sql(caller, &format!("SELECT count(*) FROM {table}"))
                .await
                .map(|_| ()),
            Op::Compact => CompactionServiceClient::new(caller.conn.clone())
                .compact(CompactRequest {
                    table: table.into(),
                    dry_run: false,
                })
                .await
                .map(|_| ()),
            Op::DropTable => caller
                .admin()
                .drop_table(DropTableRequest {
                    table: table.into(),
                    keep_data: false,
                })
                .await
                .map(|_| ()),
        }
    }
}

fn is_denial_naming(status: &Status, privilege: &str, table: &str) -> bool {
    status.code() == Code::PermissionDenied
        && status.message().contains(&format!("`{privilege}`"))
        && status.message().contains(table)
        && status.message().contains("unitable grant")
}

const PRIVILEGES: [&str; 4] = ["none", "read", "write", "admin"];

/// For every RPC and read mode: callers holding less than it needs are denied (naming the
/// missing grant), callers holding it get through.
#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_and_read_mode_needs_its_grant() -> Result<()> {
    let s = Secure::start(&[]).await?;
    let table = "sec.m";
    // One user per level, each granted on the table only (which does not exist yet).
    let mut callers = Vec::new();
    for (level, name) in PRIVILEGES.iter().enumerate() {
        let user = s.user(&format!("u_{name}")).await?;
        let privilege = match level {
            1 => Some(Privilege::Read),
            2 => Some(Privilege::Write),
            3 => Some(Privilege::Admin),
            _ => None,
        };
        if let Some(p) = privilege {
            s.grant(p, ObjectKind::Table, table, &user.name).await?;
        }
        callers.push(user);
    }
    let ops = [
        Op::CreateTable,
        Op::AddColumn,
        Op::AlterTable,
        Op::GetTable,
        Op::Write,
        Op::WriteStream,
        Op::Stream,
        Op::Snapshot,
        Op::Fresh,
        Op::Lookup,
        Op::UnaryLookup,
        Op::TrainingSet,
        Op::Query,
        Op::Compact,
        Op::DropTable,
    ];
    for (round, op) in ops.iter().enumerate() {
        for (level, caller) in callers.iter().enumerate() {
            let outcome = op.run(caller, table, round * 10 + level).await;
            let needed = PRIVILEGES[op.needs() as usize];
            if (level as u8) < op.needs() {
                let status = outcome
                    .err()
                    .with_context(|| format!("{op:?} by {} must be denied", caller.name))?;
                ensure!(
                    is_denial_naming(&status, needed, table),
                    "{op:?} by {}: want PERMISSION_DENIED naming `{needed}` on {table}, got {status:?}",
                    caller.name
                );
            } else {
                match outcome {
                    Ok(()) => {}
                    Err(status)
                        if matches!(op, Op::CreateTable)
                            && status.code() == Code::AlreadyExists => {}
                    Err(status)
                        if matches!(op, Op::DropTable) && status.code() == Code::NotFound => {}
                    Err(status) => bail!("{op:?} by {} must pass, got {status:?}", caller.name),
                }
            }
        }
    }
    // ListTables lists only what the caller holds a grant on; the table is gone now, so make
    // two and check who sees which.
    create(&s.admin, "sec.seen", "v").await?;
    create(&s.admin, "sec.hidden", "v").await?;
    s.grant(Privilege::Read, ObjectKind::Table, "sec.seen", "u_read")
        .await?;
    let list = |c: &Caller| {
        let mut admin = c.admin();
        async move {
            admin
                .list_tables(ListTablesRequest::default())
                .await
                .map(|r| r.into_inner().tables)
        }
    };
    assert_eq!(list(&callers[1]).await?, vec!["sec.seen".to_string()]);
    assert_eq!(list(&callers[0]).await?, Vec::<String>::new());
    let all = list(&s.admin).await?;
    ensure!(all.contains(&"sec.hidden".to_string()), "{all:?}");
    Ok(())
}

/// Without credentials, or with a wrong token, every service answers UNAUTHENTICATED.
#[tokio::test(flavor = "multi_thread")]
async fn calls_without_valid_credentials_are_unauthenticated() -> Result<()> {
    let s = Secure::start(&[]).await?;
    create(&s.admin, "sec.a", "v").await?;
    let url = s.service.grpc_url();
    let nobody = Caller::new(&url, "nobody", None).await?;
    let forged = Caller::new(
        &url,
        "forged",
        Some("ut_000000000000_0000000000000000000000000000000000000000000000000000000000000000"),
    )
    .await?;
    for caller in [&nobody, &forged] {
        for op in [
            Op::GetTable,
            Op::Write,
            Op::Snapshot,
            Op::UnaryLookup,
            Op::TrainingSet,
            Op::Query,
            Op::Compact,
        ] {
            let status = op
                .run(caller, "sec.a", 1)
                .await
                .err()
                .context("must fail")?;
            assert_eq!(status.code(), Code::Unauthenticated, "{op:?}: {status:?}");
        }
        let status = caller
            .access()
            .who_am_i(WhoAmIRequest {})
            .await
            .err()
            .context("must fail")?;
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    Ok(())
}

/// SQL reaches only granted tables, whatever the query's shape; an ungranted table that exists
/// and one that does not are refused alike, and nothing of the ungranted table comes back.
#[tokio::test(flavor = "multi_thread")]
async fn sql_cannot_reach_an_ungranted_table_by_any_shape() -> Result<()> {
    let s = Secure::start(&[]).await?;
    create(&s.admin, "sec.open", "v").await?;
    create(&s.admin, "sec.closed", "secret_col").await?;
    write(&s.admin, "sec.open", "{\"id\":1,\"v\":\"visible\"}\n").await?;
    write(
        &s.admin,
        "sec.closed",
        "{\"id\":1,\"secret_col\":\"topsecret\"}\n",
    )
    .await?;
    let rita = s.user("rita").await?;
    s.grant(Privilege::Read, ObjectKind::Table, "sec.open", "rita")
        .await?;

    let ok = sql(&rita, "SELECT v FROM sec.open").await?;
    ensure!(
        contains(&ok, b"visible"),
        "the granted table must be readable"
    );

    let shapes = [
        "SELECT * FROM sec.closed",
        "SELECT * FROM SEC.CLOSED",
        "SELECT * FROM \"sec\".\"closed\"",
        "SELECT * FROM datafusion.sec.closed",
        "SELECT * FROM sec.open o JOIN sec.closed c ON o.id = c.id",
        "SELECT * FROM sec.open, sec.closed",
        "SELECT * FROM sec.open WHERE id IN (SELECT id FROM sec.closed)",
        "SELECT * FROM sec.open WHERE EXISTS (SELECT 1 FROM sec.closed)",
        "SELECT (SELECT max(secret_col) FROM sec.closed) FROM sec.open",
        "SELECT * FROM (SELECT * FROM sec.closed) t",
        "WITH x AS (SELECT * FROM sec.closed) SELECT * FROM x",
        "WITH x AS (SELECT * FROM sec.open) SELECT v FROM x UNION ALL SELECT secret_col FROM sec.closed",
        "WITH open AS (SELECT * FROM sec.closed) SELECT * FROM open",
        "SELECT v FROM sec.open UNION SELECT secret_col FROM sec.closed",
        "SELECT v FROM sec.open EXCEPT SELECT secret_col FROM sec.closed",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM information_schema.columns",
        "SELECT * FROM datafusion.information_schema.tables",
        "SHOW TABLES",
        "SHOW COLUMNS FROM sec.closed",
        "DESCRIBE sec.closed",
        "EXPLAIN SELECT * FROM sec.closed",
        "SELECT * FROM closed",
        "SELECT * FROM 'sec.closed'",
    ];
    for shape in shapes {
        match sql(&rita, shape).await {
            Ok(bytes) => bail!("`{shape}` must fail, it returned {} bytes", bytes.len()),
            Err(status) => {
                let m = status.message();
                ensure!(
                    !m.contains("topsecret"),
                    "`{shape}` leaked data: {status:?}"
                );
                ensure!(
                    shape.contains("secret_col") || !m.contains("secret_col"),
                    "`{shape}` leaked the schema: {status:?}"
                );
            }
        }
    }
    // An existing ungranted table and a missing one are refused with the same words.
    let closed = sql(&rita, "SELECT * FROM sec.closed")
        .await
        .err()
        .context("must fail")?;
    let missing = sql(&rita, "SELECT * FROM sec.nothing")
        .await
        .err()
        .context("must fail")?;
    assert_eq!(closed.code(), Code::PermissionDenied);
    assert_eq!(missing.code(), closed.code());
    assert_eq!(
        missing.message().replace("sec.nothing", "T"),
        closed.message().replace("sec.closed", "T")
    );
    // Same for the table RPCs.
    let closed = Op::GetTable
        .run(&rita, "sec.closed", 0)
        .await
        .err()
        .context("must fail")?;
    let missing = Op::GetTable
        .run(&rita, "sec.nothing", 0)
        .await
        .err()
        .context("must fail")?;
    assert_eq!(missing.code(), closed.code());
    assert_eq!(
        missing.message().replace("sec.nothing", "T"),
        closed.message().replace("sec.closed", "T")
    );
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Group, namespace and global grants; membership and grant changes and token revocation take
/// effect on the next call, without a restart; the CLI drives it all; the audit log records
/// writes, admin actions, grant changes and denials.
#[tokio::test(flavor = "multi_thread")]
async fn groups_namespaces_global_grants_live_revocation_cli_and_audit() -> Result<()> {
    let s = Secure::start(&[]).await?;
    create(&s.admin, "shop.orders", "v").await?;
    create(&s.admin, "hr.pay", "v").await?;
    write(&s.admin, "hr.pay", "{\"id\":1,\"v\":\"x\"}\n").await?;
    let admin_token = s.admin.token.clone().context("admin token")?;
    let cli_as = |token: &str, args: &[&str]| {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        s.service.cli(&all)
    };
    let cli = |args: &[&str]| cli_as(&admin_token, args);

    // A group with write on a namespace, through the CLI.
    cli(&[
        "grant",
        "write",
        "ON",
        "NAMESPACE",
        "shop",
        "TO",
        "GROUP",
        "clerks",
    ])?
    .ok()?;
    cli(&["group", "add", "clerks", "gus"])?.ok()?;
    let token = cli(&["token", "create", "gus"])?.ok()?;
    let gus = Caller::new(&s.service.grpc_url(), "gus", Some(token.trim())).await?;
    write(&gus, "shop.orders", "{\"id\":1,\"v\":\"a\"}\n").await?;
    read(&gus, "shop.orders", ReadMode::Fresh).await?;
    let denied = read(&gus, "hr.pay", ReadMode::Snapshot)
        .await
        .err()
        .context("denied")?;
    ensure!(is_denial_naming(&denied, "read", "hr.pay"), "{denied:?}");
    let grants = cli(&["grants", "clerks"])?.ok()?;
    ensure!(
        grants.contains("write ON NAMESPACE shop TO GROUP clerks"),
        "{grants}"
    );
    let me = cli_as(token.trim(), &["whoami"])?.ok()?;
    ensure!(me.contains("gus") && me.contains("clerks"), "{me}");

    // Leaving the group takes the grant away at once.
    cli(&["group", "remove", "clerks", "gus"])?.ok()?;
    let denied = write(&gus, "shop.orders", "{\"id\":2,\"v\":\"b\"}\n")
        .await
        .err()
        .context("denied")?;
    ensure!(
        is_denial_naming(&denied, "write", "shop.orders"),
        "{denied:?}"
    );

    // A global read grant reaches every namespace, and is revoked live.
    cli(&["grant", "read", "ON", "ALL", "TO", "USER", "gus"])?.ok()?;
    read(&gus, "hr.pay", ReadMode::Snapshot).await?;
    sql(
        &gus,
        "SELECT * FROM hr.pay JOIN shop.orders ON hr.pay.id = shop.orders.id",
    )
    .await?;
    let denied = write(&gus, "hr.pay", "{\"id\":2,\"v\":\"b\"}\n")
        .await
        .err()
        .context("denied")?;
    ensure!(is_denial_naming(&denied, "write", "hr.pay"), "{denied:?}");
    cli(&["revoke", "read", "ON", "ALL", "TO", "USER", "gus"])?.ok()?;
    let denied = read(&gus, "hr.pay", ReadMode::Snapshot)
        .await
        .err()
        .context("denied")?;
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A table admin is not a global admin: it cannot grant beyond its table.
    s.grant(Privilege::Admin, ObjectKind::Table, "shop.orders", "gus")
        .await?;
    let out = cli_as(
        token.trim(),
        &["grant", "read", "ON", "ALL", "TO", "USER", "gus"],
    )?;
    ensure!(
        !out.status.success() && out.stderr.contains("admin"),
        "{out:?}"
    );

    // Token revocation takes effect on the next call.
    let listed = cli(&["token", "list"])?.ok()?;
    let id = token.trim().split('_').nth(1).context("token id")?;
    ensure!(listed.contains(id), "{listed}");
    ensure!(
        !listed.contains(token.trim()),
        "token list must not show secrets"
    );
    read(&gus, "shop.orders", ReadMode::Fresh).await?;
    cli(&["token", "revoke", id])?.ok()?;
    let status = read(&gus, "shop.orders", ReadMode::Fresh)
        .await
        .err()
        .context("revoked")?;
    assert_eq!(status.code(), Code::Unauthenticated);
    let out = cli_as(token.trim(), &["whoami"])?;
    ensure!(
        !out.status.success() && out.stderr.contains("token"),
        "{out:?}"
    );

    // The audit log: one JSON line per write, admin action, grant change and denial.
    let audit = std::fs::read_to_string(&s.audit)?;
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("audit lines must be JSON:\n{audit}"))?;
    let has = |principal: &str, action: &str, table: Option<&str>, outcome: &str| {
        lines.iter().any(|l| {
            l["principal"] == principal
                && l["action"] == action
                && l["outcome"] == outcome
                && table.is_none_or(|t| l["table"] == t)
                && l["time"].is_string()
        })
    };
    ensure!(
        has("admin", "CreateTable", Some("shop.orders"), "ok"),
        "{audit}"
    );
    ensure!(has("gus", "Write", Some("shop.orders"), "ok"), "{audit}");
    ensure!(
        has("gus", "Write", Some("shop.orders"), "denied"),
        "{audit}"
    );
    ensure!(
        has("gus", "Read(SNAPSHOT)", Some("hr.pay"), "denied"),
        "{audit}"
    );
    ensure!(has("admin", "Grant", None, "ok"), "{audit}");
    ensure!(has("admin", "Revoke", None, "ok"), "{audit}");
    ensure!(has("admin", "RevokeToken", None, "ok"), "{audit}");
    ensure!(has("gus", "Grant", None, "denied"), "{audit}");
    ensure!(
        has("(unauthenticated)", "authenticate", None, "unauthenticated"),
        "{audit}"
    );
    ensure!(
        !audit.contains(token.trim()),
        "the audit log must not hold secrets"
    );
    Ok(())
}

/// Grants are delegated: an admin of a namespace or table grants and revokes on it (and sees
/// its grants), never beyond it.
#[tokio::test(flavor = "multi_thread")]
async fn namespace_and_table_admins_grant_within_what_they_administer() -> Result<()> {
    let s = Secure::start(&[]).await?;
    for t in ["shop.orders", "shop.items", "hr.pay"] {
        create(&s.admin, t, "v").await?;
    }
    s.grant(Privilege::Read, ObjectKind::Table, "hr.pay", "ted")
        .await?;
    s.grant(Privilege::Admin, ObjectKind::Namespace, "shop", "nina")
        .await?;
    s.grant(Privilege::Admin, ObjectKind::Table, "shop.items", "tara")
        .await?;
    let nina = s.user("nina").await?;
    let tara = s.user("tara").await?;
    let rex = s.user("rex").await?;
    let grant = |caller: &Caller, g: GrantSpec| {
        let mut access = caller.access();
        async move {
            access
                .grant(GrantRequest { grant: Some(g) })
                .await
                .map(|_| ())
        }
    };
    use GranteeKind::{Group, User};
    use ObjectKind::{All, Namespace, Table};
    use Privilege::{Admin, Read, Write};
    // Within: each succeeds, and takes effect.
    grant(&nina, spec(Read, Table, "shop.orders", User, "rex")).await?;
    grant(&nina, spec(Write, Namespace, "shop", Group, "clerks")).await?;
    grant(&tara, spec(Admin, Table, "shop.items", User, "rex")).await?;
    read(&rex, "shop.orders", ReadMode::Snapshot).await?;
    Op::Compact.run(&rex, "shop.items", 0).await?;
    // Beyond: denied, naming the admin grant that is missing.
    for (caller, g, object) in [
        (
            &nina,
            spec(Read, Table, "hr.pay", User, "rex"),
            "table hr.pay",
        ),
        (
            &nina,
            spec(Read, Namespace, "hr", User, "rex"),
            "namespace hr",
        ),
        (&nina, spec(Read, All, "", User, "rex"), "ALL"),
        (
            &tara,
            spec(Read, Table, "shop.orders", User, "rex"),
            "table shop.orders",
        ),
        (
            &tara,
            spec(Read, Namespace, "shop", User, "rex"),
            "namespace shop",
        ),
    ] {
        let status = grant(caller, g).await.err().context("must be denied")?;
        ensure!(
            status.code() == Code::PermissionDenied
                && status.message().contains("`admin`")
                && status.message().contains(object),
            "{} granting on {object}: {status:?}",
            caller.name
        );
    }
    // rex holds admin on shop.items through tara, so rex may grant on it too.
    grant(&rex, spec(Read, Table, "shop.items", User, "ted")).await?;
    // Listing: a namespace admin sees the grants on its namespace and tables, not hr's.
    let seen: Vec<GrantSpec> = nina
        .access()
        .list_grants(ListGrantsRequest::default())
        .await?
        .into_inner()
        .grants;
    let objects: Vec<&str> = seen.iter().map(|g| g.object.as_str()).collect();
    ensure!(
        objects.contains(&"shop.orders") && objects.contains(&"shop.items"),
        "{objects:?}"
    );
    ensure!(
        !objects.contains(&"hr.pay"),
        "nina must not see hr grants: {objects:?}"
    );
    // Revoking within works and takes effect; beyond is denied.
    nina.access()
        .revoke(RevokeRequest {
            grant: Some(spec(Read, Table, "shop.orders", User, "rex")),
        })
        .await?;
    let denied = read(&rex, "shop.orders", ReadMode::Snapshot)
        .await
        .err()
        .context("revoked")?;
    ensure!(
        is_denial_naming(&denied, "read", "shop.orders"),
        "{denied:?}"
    );
    let status = nina
        .access()
        .revoke(RevokeRequest {
            grant: Some(spec(Read, Table, "hr.pay", User, "ted")),
        })
        .await
        .err()
        .context("must be denied")?;
    assert_eq!(status.code(), Code::PermissionDenied);
    Ok(())
}

/// Waits (bounded) for the next message of `stream` that is an error, skipping data.
async fn next_error<T>(
    stream: &mut tonic::Streaming<T>,
    within: std::time::Duration,
) -> Result<Status> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => bail!("the stream did not end within {within:?}"),
            Ok(None) => bail!("the stream ended without an error"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(status))) => return Ok(status),
        }
    }
}

/// Streams already open end when their grant or token is revoked: an idle STREAM, a SQL result
/// and a WriteStream; rows a WriteStream wrote before the revocation stay written.
#[tokio::test(flavor = "multi_thread")]
async fn open_streams_end_when_their_grant_or_token_is_revoked() -> Result<()> {
    let s = Secure::start(&[]).await?;
    create(&s.admin, "live.t", "v").await?;
    write(&s.admin, "live.t", "{\"id\":1,\"v\":\"a\"}\n").await?;
    s.grant(Privilege::Write, ObjectKind::Table, "live.t", "sam")
        .await?;
    let sam = s.user("sam").await?;
    let enough = std::time::Duration::from_secs(20);

    // An idle STREAM (it has delivered everything and waits for more) ends on revocation.
    let mut request = read_request("live.t", ReadMode::Stream);
    request.limit = 0;
    let mut stream = sam.reader().read(request.clone()).await?.into_inner();
    stream.next().await.context("first message")??;
    s.admin
        .access()
        .revoke(RevokeRequest {
            grant: Some(spec(
                Privilege::Write,
                ObjectKind::Table,
                "live.t",
                GranteeKind::User,
                "sam",
            )),
        })
        .await?;
    let status = next_error(&mut stream, enough).await?;
    ensure!(is_denial_naming(&status, "read", "live.t"), "{status:?}");

    // A token revoked while its STREAM is open ends it as UNAUTHENTICATED.
    s.grant(Privilege::Write, ObjectKind::Table, "live.t", "sam")
        .await?;
    let mut stream = sam.reader().read(request).await?.into_inner();
    stream.next().await.context("first message")??;
    let id = sam
        .token
        .as_deref()
        .and_then(|t| t.split('_').nth(1))
        .context("token id")?
        .to_string();
    // A WriteStream opened by the same token, with one message through before the revocation.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut writer = sam.writer();
    let call = tokio::spawn(async move {
        writer
            .write_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(write_request(
        "live.t",
        "{\"id\":2,\"v\":\"before\"}\n",
        false,
    ))
    .await?;
    // The first message is written once the row is visible.
    let deadline = tokio::time::Instant::now() + enough;
    loop {
        let body = sql_in(
            &s.admin,
            "SELECT v FROM live.t WHERE id = 2",
            ReadMode::Fresh,
        )
        .await?;
        if contains(&body, b"before") {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the first WriteStream message was not written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    s.admin
        .access()
        .revoke_token(RevokeTokenRequest { token_id: id })
        .await?;
    let status = next_error(&mut stream, enough).await?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    ensure!(status.message().contains("revoked"), "{status:?}");
    tx.send(write_request(
        "live.t",
        "{\"id\":3,\"v\":\"after\"}\n",
        false,
    ))
    .await?;
    drop(tx);
    let status = call.await?.err().context("the WriteStream must fail")?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    ensure!(
        status.message().contains("1 rows") && status.message().contains("durable"),
        "{status:?}"
    );
    let all = sql_in(&s.admin, "SELECT id, v FROM live.t", ReadMode::Fresh).await?;
    ensure!(contains(&all, b"before"), "the acknowledged row is lost");
    ensure!(
        !contains(&all, b"after"),
        "a row after the revocation was written"
    );
    Ok(())
}

/// Two servers on one access database enforce one policy: a token, a grant and a revocation
/// made through one take effect on the other within its reload interval, open streams
/// included.
#[tokio::test(flavor = "multi_thread")]
async fn servers_sharing_the_access_database_enforce_one_policy() -> Result<()> {
    let a = Secure::start(&["--access-reload-interval", "200ms"]).await?;
    let access_db = format!("sqlite://{}/catalog.db", a.service.data_dir().display());
    let b = tokio::task::spawn_blocking(move || {
        Service::start_secure(&[
            "--access-db",
            &access_db,
            "--access-reload-interval",
            "200ms",
        ])
    })
    .await??;
    let url_b = b.grpc_url();
    let admin_b = Caller::new(&url_b, "admin", a.admin.token.as_deref()).await?;
    create(&admin_b, "far.t", "v").await?;
    write(&admin_b, "far.t", "{\"id\":1,\"v\":\"x\"}\n").await?;

    // A token made on A authenticates on B once B has reloaded.
    let bea_a = a.user("bea").await?;
    let bea = Caller::new(&url_b, "bea", bea_a.token.as_deref()).await?;
    let enough = std::time::Duration::from_secs(20);
    let eventually = |what: &'static str, done: bool, since: tokio::time::Instant| {
        ensure!(since.elapsed() < enough, "B never saw {what}");
        Ok::<bool, anyhow::Error>(done)
    };
    let since = tokio::time::Instant::now();
    while !eventually("the new token", who(&bea).await.is_ok(), since)? {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Denied on B until A grants; then allowed on B.
    let denied = read(&bea, "far.t", ReadMode::Fresh)
        .await
        .err()
        .context("denied")?;
    ensure!(is_denial_naming(&denied, "read", "far.t"), "{denied:?}");
    a.grant(Privilege::Read, ObjectKind::Namespace, "far", "bea")
        .await?;
    let since = tokio::time::Instant::now();
    while !eventually(
        "the grant",
        read(&bea, "far.t", ReadMode::Fresh).await.is_ok(),
        since,
    )? {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A STREAM open on B ends when A revokes the token.
    let mut request = read_request("far.t", ReadMode::Stream);
    request.limit = 0;
    let mut stream = bea.reader().read(request).await?.into_inner();
    stream.next().await.context("first message")??;
    let id = bea_a
        .token
        .as_deref()
        .and_then(|t| t.split('_').nth(1))
        .context("token id")?
        .to_string();
    a.admin
        .access()
        .revoke_token(RevokeTokenRequest { token_id: id })
        .await?;
    let status = next_error(&mut stream, enough).await?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = who(&bea).await.err().context("revoked on B")?;
    ensure!(format!("{status:#}").contains("revoked") || format!("{status:#}").contains("token"));
    Ok(())
}

/// Tokens listed in `--token-file` (hashed lines made offline by `unitable token file-add`)
/// authenticate; deleting a line revokes its token on the next reload; a broken file keeps the
/// previous policy; such tokens cannot be revoked through the API, which says where they live.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_a_file_authenticate_and_deleting_the_line_revokes_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens");
    let file_arg = file.display().to_string();
    let add = |user: &str| -> Result<String> {
        let out = std::process::Command::new(unitable_tests::unitable_bin()?)
            .args(["token", "file-add", user, "--token-file", &file_arg])
            .output()?;
        ensure!(out.status.success(), "{out:?}");
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    let fred_token = add("fred")?;
    let gwen_token = add("gwen")?;
    let text = std::fs::read_to_string(&file)?;
    ensure!(
        !text.contains(&fred_token) && !text.contains(&gwen_token),
        "the file must hold hashes only"
    );
    let s = Secure::start(&[
        "--token-file",
        &file_arg,
        "--access-reload-interval",
        "200ms",
    ])
    .await?;
    let url = s.service.grpc_url();
    let fred = Caller::new(&url, "fred", Some(&fred_token)).await?;
    let gwen = Caller::new(&url, "gwen", Some(&gwen_token)).await?;
    assert_eq!(who(&fred).await?, ("fred".into(), "token".into()));
    create(&s.admin, "file.t", "v").await?;
    s.grant(Privilege::Read, ObjectKind::Table, "file.t", "fred")
        .await?;
    read(&fred, "file.t", ReadMode::Snapshot).await?;

    // The API cannot revoke a file token, and says where to do it.
    let fred_id = fred_token.split('_').nth(1).context("id")?.to_string();
    let status = s
        .admin
        .access()
        .revoke_token(RevokeTokenRequest {
            token_id: fred_id.clone(),
        })
        .await
        .err()
        .context("must be refused")?;
    ensure!(status.message().contains("--token-file"), "{status:?}");

    // A broken file keeps the previous policy.
    std::fs::write(&file, format!("{text}garbage line\n"))?;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    ensure!(
        who(&fred).await.is_ok(),
        "a broken file must not drop the policy"
    );
    ensure!(
        s.service.log().contains("line 3 has 2 fields"),
        "the reload failure must name the line"
    );

    // Deleting fred's line revokes fred's token, and only it.
    let kept: String = text
        .lines()
        .filter(|l| !l.contains(&fred_id))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, kept)?;
    let since = tokio::time::Instant::now();
    while who(&fred).await.is_ok() {
        ensure!(
            since.elapsed() < std::time::Duration::from_secs(20),
            "the deleted line still authenticates"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(who(&gwen).await?, ("gwen".into(), "token".into()));
    Ok(())
}

/// Who the server says `caller` is, and how it authenticated.
async fn who(caller: &Caller) -> Result<(String, String)> {
    let me = caller
        .access()
        .who_am_i(WhoAmIRequest {})
        .await?
        .into_inner();
    Ok((me.user, me.authenticated_by))
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate for user `carol`,
/// as PEM files in `dir`.
fn test_pki(dir: &Path) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    for (name, sans) in [
        ("server", vec!["127.0.0.1".to_string(), "localhost".into()]),
        ("carol", vec!["carol".into()]),
    ] {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(sans)?.signed_by(&key, &ca)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    // A certificate from another CA, which the server must refuse.
    let other = CertifiedIssuer::self_signed(
        {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        },
        KeyPair::generate()?,
    )?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["mallory".to_string()])?.signed_by(&key, &other)?;
    std::fs::write(dir.join("mallory.pem"), cert.pem())?;
    std::fs::write(dir.join("mallory.key"), key.serialize_pem())?;
    Ok(())
}

/// gRPC over TLS with a test CA: tokens work over it, client certificates from the CA name
/// their user (mutual TLS), certificates from elsewhere and plaintext clients are refused, and
/// the CLI connects with --tls-ca.
#[tokio::test(flavor = "multi_thread")]
async fn tls_and_mutual_tls_end_to_end() -> Result<()> {
    let pki = tempfile::tempdir()?;
    test_pki(pki.path())?;
    let p = |f: &str| pki.path().join(f).display().to_string();
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("admin.token");
    let args = [
        "--bootstrap-admin-token-file".to_string(),
        token_file.display().to_string(),
        "--tls-cert".into(),
        cert,
        "--tls-key".into(),
        key,
        "--tls-client-ca".into(),
        ca.clone(),
    ];
    let service = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Service::start_secure(&args)
    })
    .await??;
    let admin_token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let url = format!("https://127.0.0.1:{}", service.grpc_addr().port());
    let ca_pem = std::fs::read(pki.path().join("ca.pem"))?;
    let tls = |identity: Option<&str>| -> Result<ClientTlsConfig> {
        let mut t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
        if let Some(name) = identity {
            t = t.identity(Identity::from_pem(
                std::fs::read(pki.path().join(format!("{name}.pem")))?,
                std::fs::read(pki.path().join(format!("{name}.key")))?,
            ));
        }
        Ok(t)
    };
    let connect = |t: ClientTlsConfig| {
        let url = url.clone();
        async move {
            Channel::from_shared(url)?
                .tls_config(t)?
                .connect()
                .await
                .map_err(anyhow::Error::from)
        }
    };

    // A token over TLS.
    let admin = Caller::over(connect(tls(None)?).await?, "admin", Some(&admin_token))?;
    assert_eq!(who(&admin).await?, ("admin".into(), "token".into()));
    create(&admin, "tls.t", "v").await?;
    admin
        .access()
        .grant(GrantRequest {
            grant: Some(spec(
                Privilege::Write,
                ObjectKind::Table,
                "tls.t",
                GranteeKind::User,
                "carol",
            )),
        })
        .await?;

    // A client certificate from the CA, no token: the user is its DNS name.
    let carol = Caller::over(connect(tls(Some("carol"))?).await?, "carol", None)?;
    assert_eq!(who(&carol).await?, ("carol".into(), "certificate".into()));
    write(&carol, "tls.t", "{\"id\":1,\"v\":\"over tls\"}\n").await?;
    read(&carol, "tls.t", ReadMode::Fresh).await?;
    let denied = create(&carol, "tls.u", "v").await.err().context("denied")?;
    assert_eq!(denied.code(), Code::PermissionDenied);

    // TLS without a client certificate or token: unauthenticated.
    let anonymous = Caller::over(connect(tls(None)?).await?, "nobody", None)?;
    let status = anonymous
        .access()
        .who_am_i(WhoAmIRequest {})
        .await
        .err()
        .context("must fail")?;
    assert_eq!(status.code(), Code::Unauthenticated);

    // A certificate from another CA does not get through the handshake.
    let mallory = match connect(tls(Some("mallory"))?).await {
        Err(_) => None,
        Ok(channel) => Some(Caller::over(channel, "mallory", None)?),
    };
    if let Some(mallory) = mallory {
        let result = mallory.access().who_am_i(WhoAmIRequest {}).await;
        ensure!(
            result.is_err(),
            "a foreign certificate must be refused: {result:?}"
        );
    }

    // Plaintext against the TLS port fails.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", service.grpc_addr().port()))?
        .connect()
        .await;
    if let Ok(channel) = plain {
        let caller = Caller::over(channel, "admin", Some(&admin_token))?;
        ensure!(caller.access().who_am_i(WhoAmIRequest {}).await.is_err());
    }

    // The CLI over TLS with --tls-ca and a token.
    let out = std::process::Command::new(unitable_tests::unitable_bin()?)
        .args([
            "--server",
            &url,
            "--tls-ca",
            &ca,
            "--token",
            &admin_token,
            "whoami",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success() && stdout.contains("admin"), "{out:?}");
    Ok(())
}
