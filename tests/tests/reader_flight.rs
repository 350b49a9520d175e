//! Arrow Flight (docs/api.md "Arrow Flight") against the model: random upserts and deletes in
//! rounds, each followed by FRESH over every endpoint (= the model), SNAPSHOT of every snapshot
//! seen (= the changelog replayed below the snapshot's anchored offsets, read over gRPC
//! STREAM), projection and filter in both modes, a FRESH plan whose tickets are fetched again
//! after more writes (still the planned rows), and Flight SQL statements in both read modes.
//! Then the refusals: no credentials, a token without a grant (for GetFlightInfo, for DoGet
//! with someone else's ticket, for Flight SQL), an unknown table, a bad filter, a bad ticket,
//! an unsupported Flight SQL command, a ticket of a table dropped and created again.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use arrow::array::{Array, Int64Array, RecordBatch};
use arrow_flight::error::FlightError;
use arrow_flight::sql::{
    CommandGetPrimaryKeys, CommandGetTables, CommandStatementQuery, ProstMessageExt,
};
use arrow_flight::{FlightClient, FlightDescriptor, FlightInfo, Ticket};
use futures::TryStreamExt;
use prost::Message;
use serde_json::{Value, json};
use support::read::{Change, Client, kv_rows, read, replay, request, start, subscribe};
use support::{TABLE, create_kv_table, random_writes};
use tonic::Code;
use tonic::transport::Channel;
use unitable_proto::v1::ReadMode;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::stream_start::Kind;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_tests::Service;
use unitable_tests::iceberg_oracle::Rng;

async fn flight(url: &str, token: Option<&str>) -> Result<FlightClient> {
    let channel = Channel::from_shared(url.to_string())?.connect().await?;
    let mut client = FlightClient::new(channel);
    if let Some(token) = token {
        client.add_header("authorization", &format!("Bearer {token}"))?;
    }
    Ok(client)
}

fn cmd(read: Value) -> FlightDescriptor {
    FlightDescriptor::new_cmd(read.to_string())
}

fn sql(query: &str) -> FlightDescriptor {
    let command = CommandStatementQuery {
        query: query.into(),
        transaction_id: None,
    };
    FlightDescriptor::new_cmd(command.as_any().encode_to_vec())
}

/// The batches of one endpoint.
async fn fetch(client: &mut FlightClient, ticket: Ticket) -> Result<Vec<RecordBatch>, FlightError> {
    client.do_get(ticket).await?.try_collect().await
}

/// Every endpoint of a read, one DoGet each; the plan and each endpoint's batches.
async fn read_parts(
    client: &mut FlightClient,
    descriptor: FlightDescriptor,
) -> Result<(FlightInfo, Vec<Vec<RecordBatch>>), FlightError> {
    let info = client.get_flight_info(descriptor).await?;
    let mut parts = Vec::new();
    for endpoint in &info.endpoint {
        let ticket = endpoint
            .ticket
            .clone()
            .ok_or_else(|| FlightError::ProtocolError("an endpoint without a ticket".into()))?;
        parts.push(fetch(client, ticket).await?);
    }
    Ok((info, parts))
}

/// id -> v of the rows of every part (an id in two parts fails).
fn values(parts: &[Vec<RecordBatch>]) -> Result<BTreeMap<i64, String>> {
    let all: Vec<RecordBatch> = parts.iter().flatten().cloned().collect();
    Ok(kv_rows(&all)?
        .into_iter()
        .map(|(id, (v, n))| {
            // support::random_writes writes `n` as the last number of `v`.
            debug_assert!(v.ends_with(&format!("-{n}")));
            (id, v)
        })
        .collect())
}

/// `n` of a value written by `support::random_writes`.
fn n_of(v: &str) -> i64 {
    v.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

fn app_metadata(info: &FlightInfo) -> Result<Value> {
    Ok(serde_json::from_slice(&info.app_metadata)?)
}

/// `offsets` of an `as_of` in a FlightInfo's metadata.
fn offsets(as_of: &Value) -> BTreeMap<u32, i64> {
    as_of["offsets"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(p, o)| Some((p.parse().ok()?, o.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The state after the changes below `offsets`.
fn replay_below(changes: &[Change], offsets: &BTreeMap<u32, i64>) -> BTreeMap<i64, String> {
    let below: Vec<Change> = changes
        .iter()
        .filter(|c| {
            let p = c.partition.unwrap_or(-1) as u32;
            c.offset.unwrap_or(i64::MAX) < offsets.get(&p).copied().unwrap_or(0)
        })
        .cloned()
        .collect();
    let mut out = BTreeMap::new();
    replay(&mut out, &below);
    out.into_iter().map(|(id, (v, _))| (id, v)).collect()
}

/// Every change in the changelog so far (gRPC STREAM from earliest up to the heads).
async fn changelog(reader: &mut Client) -> Result<Vec<Change>> {
    let (_, heads) = read(reader, request(ReadMode::Fresh, "")).await?;
    let records: i64 = heads.offsets.iter().map(|o| o.offset).sum();
    if records == 0 {
        return Ok(Vec::new());
    }
    subscribe(reader, start(Kind::Earliest), "", records as u64)
        .await?
        .collect()
        .await
}

fn code(e: &FlightError) -> Option<Code> {
    match e {
        FlightError::Tonic(status) => Some(status.code()),
        _ => None,
    }
}

fn expect_refused<T>(
    outcome: Result<T, FlightError>,
    want: Code,
    says: &str,
    what: &str,
) -> Result<()> {
    match outcome {
        Ok(_) => bail!("{what}: succeeded, expected {want:?}"),
        Err(e) => {
            ensure!(code(&e) == Some(want), "{what}: {e}, expected {want:?}");
            ensure!(
                e.to_string().contains(says),
                "{what}: `{e}` does not say `{says}`"
            );
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flight_reads_match_the_model() -> Result<()> {
    let service =
        tokio::task::spawn_blocking(|| Service::start(&["--commit-interval", "150ms"])).await??;
    create_kv_table(&service, 4).await?;
    let url = service.grpc_url();
    let mut writer = WriteServiceClient::connect(url.clone()).await?;
    let mut reader = ReadServiceClient::connect(url.clone()).await?;
    let mut client = flight(&url, None).await?;
    let mut rng = Rng(0xf1_1e47_0000_0017);
    let mut model = BTreeMap::new();
    let mut snapshots = BTreeSet::new();
    let mut most_endpoints = 0;
    let mut split_with_tail = 0;
    for round in 0..6 {
        random_writes(
            &mut writer,
            &mut rng,
            &mut model,
            400,
            4,
            round % 2 == 0,
            &format!("r{round}"),
        )
        .await?;
        // FRESH over every endpoint: the model.
        let (info, parts) =
            read_parts(&mut client, cmd(json!({"table": TABLE, "mode": "fresh"}))).await?;
        ensure!(
            values(&parts)? == model,
            "round {round}: Flight FRESH differs from the model"
        );
        most_endpoints = most_endpoints.max(info.endpoint.len());
        // Did that read merge a changelog tail over several endpoints? (Its end is past its
        // snapshot's anchored offsets.)
        let fresh = app_metadata(&info)?;
        if let Some(id) = fresh["snapshot_id"].as_i64() {
            let base = client
                .get_flight_info(cmd(json!({"table": TABLE, "snapshot_id": id})))
                .await?;
            let anchored: i64 = offsets(&app_metadata(&base)?).values().sum();
            let end: i64 = offsets(&fresh).values().sum();
            if end > anchored && info.endpoint.len() > 1 {
                split_with_tail += 1;
            }
        }

        // SNAPSHOT: the latest (by path) and every snapshot seen, by id, over every endpoint,
        // equal the changelog replayed below their anchored offsets.
        let changes = changelog(&mut reader).await?;
        let (info, parts) =
            read_parts(&mut client, FlightDescriptor::new_path(vec![TABLE.into()])).await?;
        let as_of = app_metadata(&info)?;
        if let Some(id) = as_of["snapshot_id"].as_i64() {
            snapshots.insert(id);
        }
        ensure!(
            values(&parts)? == replay_below(&changes, &offsets(&as_of)),
            "round {round}: Flight SNAPSHOT (latest) differs from the changelog below {as_of}"
        );
        for &id in &snapshots {
            let (info, parts) =
                read_parts(&mut client, cmd(json!({"table": TABLE, "snapshot_id": id}))).await?;
            let as_of = app_metadata(&info)?;
            ensure!(
                as_of["snapshot_id"].as_i64() == Some(id),
                "as_of names another snapshot"
            );
            let want = replay_below(&changes, &offsets(&as_of));
            ensure!(
                values(&parts)? == want,
                "round {round}: SNAPSHOT {id} differs"
            );
            // Projection and filter, split in two endpoints at most.
            let (info, parts) = read_parts(
                &mut client,
                cmd(
                    json!({"table": TABLE, "snapshot_id": id, "columns": ["n", "id"],
                           "filter": "id < 200 AND n >= 2", "max_endpoints": 2}),
                ),
            )
            .await?;
            ensure!(
                info.endpoint.len() <= 2,
                "max_endpoints 2 gave {}",
                info.endpoint.len()
            );
            let got = projected(&parts)?;
            let want: BTreeMap<i64, i64> = want
                .iter()
                .filter(|(id, v)| **id < 200 && n_of(v) >= 2)
                .map(|(id, v)| (*id, n_of(v)))
                .collect();
            ensure!(got == want, "round {round}: filtered SNAPSHOT {id} differs");
        }

        // FRESH with projection and filter.
        let (_, parts) = read_parts(
            &mut client,
            cmd(
                json!({"table": TABLE, "mode": "fresh", "columns": ["n", "id"],
                       "filter": "n % 2 = 0"}),
            ),
        )
        .await?;
        let want: BTreeMap<i64, i64> = model
            .iter()
            .filter(|(_, v)| n_of(v) % 2 == 0)
            .map(|(id, v)| (*id, n_of(v)))
            .collect();
        ensure!(
            projected(&parts)? == want,
            "round {round}: filtered FRESH differs"
        );

        // A FRESH plan pins its data: fetched again after more writes, the same rows.
        let info = client
            .get_flight_info(cmd(json!({"table": TABLE, "mode": "fresh"})))
            .await?;
        let planned = model.clone();
        random_writes(
            &mut writer,
            &mut rng,
            &mut model,
            400,
            2,
            false,
            &format!("x{round}"),
        )
        .await?;
        let mut parts = Vec::new();
        for endpoint in &info.endpoint {
            parts.push(fetch(&mut client, endpoint.ticket.clone().context("no ticket")?).await?);
        }
        ensure!(
            values(&parts)? == planned,
            "round {round}: a FRESH plan moved with the writes"
        );

        // Flight SQL, FRESH (header) and SNAPSHOT (default).
        let mut fresh_sql = flight(&url, None).await?;
        fresh_sql.add_header("unitable-read-mode", "fresh")?;
        let (_, parts) = read_parts(
            &mut fresh_sql,
            sql(&format!("SELECT id, v, n FROM {TABLE}")),
        )
        .await?;
        ensure!(
            values(&parts)? == model,
            "round {round}: Flight SQL (fresh) differs"
        );
        let changes = changelog(&mut reader).await?;
        let (info, parts) = read_parts(
            &mut client,
            sql(&format!("SELECT * FROM {TABLE} WHERE id >= 0")),
        )
        .await?;
        let as_of = &app_metadata(&info)?[TABLE];
        ensure!(
            values(&parts)? == replay_below(&changes, &offsets(as_of)),
            "round {round}: Flight SQL (snapshot) differs from the changelog below {as_of}"
        );
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    ensure!(
        snapshots.len() >= 3,
        "only {} snapshots checked",
        snapshots.len()
    );
    ensure!(
        most_endpoints > 1,
        "no read was split into more than one endpoint"
    );
    ensure!(
        split_with_tail > 0,
        "no FRESH read merged a changelog tail over several endpoints"
    );
    Ok(())
}

/// id -> n of parts projected to `n, id` (in that order).
fn projected(parts: &[Vec<RecordBatch>]) -> Result<BTreeMap<i64, i64>> {
    let mut out = BTreeMap::new();
    for batch in parts.iter().flatten() {
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        ensure!(names == ["n", "id"], "projected columns are {names:?}");
        let n = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("n")?;
        let id = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("id")?;
        for i in 0..batch.num_rows() {
            ensure!(
                out.insert(id.value(i), n.value(i)).is_none(),
                "id {} twice",
                id.value(i)
            );
        }
    }
    Ok(out)
}

mod secure {
    use tonic::metadata::{Ascii, MetadataValue};
    use tonic::service::Interceptor;
    use tonic::service::interceptor::InterceptedService;
    use tonic::{Request, Status};
    use unitable_proto::v1::access_service_client::AccessServiceClient;
    use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
    use unitable_proto::v1::write_service_client::WriteServiceClient;

    use super::*;

    #[derive(Clone)]
    pub(super) struct Bearer(pub(super) MetadataValue<Ascii>);

    impl Interceptor for Bearer {
        fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
            request
                .metadata_mut()
                .insert("authorization", self.0.clone());
            Ok(request)
        }
    }

    pub(super) type Conn = InterceptedService<Channel, Bearer>;

    pub(super) async fn conn(url: &str, token: &str) -> Result<Conn> {
        let channel = Channel::from_shared(url.to_string())?.connect().await?;
        Ok(InterceptedService::new(
            channel,
            Bearer(format!("Bearer {token}").parse()?),
        ))
    }

    pub(super) fn admin(c: &Conn) -> TableAdminServiceClient<Conn> {
        TableAdminServiceClient::new(c.clone())
    }
    pub(super) fn access(c: &Conn) -> AccessServiceClient<Conn> {
        AccessServiceClient::new(c.clone())
    }
    pub(super) fn writer(c: &Conn) -> WriteServiceClient<Conn> {
        WriteServiceClient::new(c.clone())
    }
}

fn definition() -> unitable_proto::v1::TableDefinition {
    use unitable_proto::v1::{Column, DataType, TableDefinition, data_type};
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
        table: TABLE.into(),
        columns: vec![
            column("id", data_type::Kind::Int64, true),
            column("v", data_type::Kind::String, false),
            column("n", data_type::Kind::Int64, false),
        ],
        primary_key: vec!["id".into()],
        buckets: 2,
        ..TableDefinition::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flight_needs_credentials_and_a_grant_and_says_what_is_wrong() -> Result<()> {
    use unitable_proto::v1::{
        CreateTableRequest, CreateTokenRequest, DropTableRequest, GrantRequest, GrantSpec,
        GranteeKind, ObjectKind, Privilege, RowFormat, WaitFor, WriteOp, WriteRequest,
    };
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("admin.token");
    let args = [
        "--bootstrap-admin-token-file".to_string(),
        token_file.display().to_string(),
        "--commit-interval".into(),
        "150ms".into(),
    ];
    let service = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Service::start_secure(&args)
    })
    .await??;
    let url = service.grpc_url();
    let admin_token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let admin = secure::conn(&url, &admin_token).await?;
    let create = || CreateTableRequest {
        definition: Some(definition()),
    };
    secure::admin(&admin).create_table(create()).await?;
    let write = |rows: &str| WriteRequest {
        table: TABLE.into(),
        op: WriteOp::Upsert as i32,
        format: RowFormat::JsonLines as i32,
        rows: rows.as_bytes().to_vec(),
        wait_for: WaitFor::Snapshot as i32,
        request_id: String::new(),
    };
    let rows: String = (0..30)
        .map(|i| format!("{{\"id\":{i},\"v\":\"a-{i}\",\"n\":{i}}}\n"))
        .collect();
    secure::writer(&admin).write(write(&rows)).await?;
    let want: BTreeMap<i64, String> = (0..30).map(|i| (i, format!("a-{i}"))).collect();
    let bob_token = secure::access(&admin)
        .create_token(CreateTokenRequest {
            user: "bob".into(),
            description: "flight test".into(),
        })
        .await?
        .into_inner()
        .token;

    let mut anonymous = flight(&url, None).await?;
    let mut root = flight(&url, Some(&admin_token)).await?;
    let mut bob = flight(&url, Some(&bob_token)).await?;
    let path = || FlightDescriptor::new_path(vec![TABLE.into()]);

    expect_refused(
        anonymous.get_flight_info(path()).await,
        Code::Unauthenticated,
        "requires credentials",
        "no credentials",
    )?;
    let (_, parts) = read_parts(&mut root, path()).await?;
    ensure!(values(&parts)? == want, "the admin's SNAPSHOT differs");
    expect_refused(
        bob.get_flight_info(path()).await,
        Code::PermissionDenied,
        "`bob` lacks `read` on table crash.kv",
        "GetFlightInfo without a grant",
    )?;
    // A missing table answers the same as an ungranted one (no existence leak).
    expect_refused(
        bob.get_flight_info(FlightDescriptor::new_path(vec!["crash.none".into()]))
            .await,
        Code::PermissionDenied,
        "lacks `read` on table crash.none",
        "GetFlightInfo of a missing table without a grant",
    )?;
    let info = root
        .get_flight_info(cmd(json!({"table": TABLE, "mode": "fresh"})))
        .await?;
    let ticket = info.endpoint[0].ticket.clone().context("no ticket")?;
    expect_refused(
        fetch(&mut bob, ticket.clone()).await,
        Code::PermissionDenied,
        "lacks `read`",
        "DoGet of the admin's ticket without a grant",
    )?;
    expect_refused(
        bob.get_flight_info(sql(&format!("SELECT count(*) FROM {TABLE}")))
            .await,
        Code::PermissionDenied,
        "lacks `read`",
        "Flight SQL without a grant",
    )?;
    // GetTables lists only what the caller may read.
    let tables = CommandGetTables {
        catalog: None,
        db_schema_filter_pattern: None,
        table_name_filter_pattern: None,
        table_types: vec![],
        include_schema: true,
    };
    let listed = |parts: &[Vec<RecordBatch>]| -> usize {
        parts.iter().flatten().map(RecordBatch::num_rows).sum()
    };
    let descriptor = FlightDescriptor::new_cmd(tables.as_any().encode_to_vec());
    let (_, parts) = read_parts(&mut bob, descriptor.clone()).await?;
    ensure!(listed(&parts) == 0, "bob sees tables he cannot read");
    let (_, parts) = read_parts(&mut root, descriptor.clone()).await?;
    ensure!(listed(&parts) == 1, "the admin does not see the table");

    secure::access(&admin)
        .grant(GrantRequest {
            grant: Some(GrantSpec {
                privilege: Privilege::Read as i32,
                object_kind: ObjectKind::Table as i32,
                object: TABLE.into(),
                grantee_kind: GranteeKind::User as i32,
                grantee: "bob".into(),
            }),
        })
        .await?;
    ensure!(
        values(&[fetch(&mut bob, ticket).await?])? == want,
        "bob's DoGet after the grant"
    );
    let (_, parts) = read_parts(&mut bob, descriptor).await?;
    ensure!(
        listed(&parts) == 1,
        "bob does not see the table after the grant"
    );

    // Clear errors for bad requests.
    expect_refused(
        root.get_flight_info(FlightDescriptor::new_path(vec!["crash.none".into()]))
            .await,
        Code::NotFound,
        "crash.none",
        "an unknown table",
    )?;
    expect_refused(
        root.get_flight_info(cmd(json!({"table": TABLE, "filter": "nope > 1"})))
            .await,
        Code::InvalidArgument,
        "nope",
        "a filter on an unknown column",
    )?;
    expect_refused(
        root.get_flight_info(cmd(
            json!({"table": TABLE, "mode": "fresh", "snapshot_id": 1}),
        ))
        .await,
        Code::InvalidArgument,
        "time-travel",
        "FRESH with a snapshot id",
    )?;
    expect_refused(
        fetch(&mut root, Ticket::new(b"\xff\x00junk".to_vec())).await,
        Code::InvalidArgument,
        "ticket",
        "a ticket that is not one",
    )?;
    let keys = CommandGetPrimaryKeys {
        catalog: None,
        db_schema: Some("crash".into()),
        table: "kv".into(),
    };
    expect_refused(
        root.get_flight_info(FlightDescriptor::new_cmd(keys.as_any().encode_to_vec()))
            .await,
        Code::Unimplemented,
        "CommandStatementQuery",
        "an unsupported Flight SQL command",
    )?;

    // A ticket of a table dropped and created again is refused, not served from the new one.
    let info = root.get_flight_info(path()).await?;
    secure::admin(&admin)
        .drop_table(DropTableRequest {
            table: TABLE.into(),
            keep_data: false,
        })
        .await?;
    secure::admin(&admin).create_table(create()).await?;
    expect_refused(
        fetch(
            &mut root,
            info.endpoint[0].ticket.clone().context("no ticket")?,
        )
        .await,
        Code::FailedPrecondition,
        "dropped and created again",
        "a ticket of a dropped table",
    )?;
    Ok(())
}
