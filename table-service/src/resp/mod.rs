//! LOOKUP over the Redis protocol (RESP2), for feature fetchers that already speak Redis and
//! for the lowest latency a key read can have here: one TCP round trip, no HTTP/2 framing.
//!
//! `--resp-addr` turns it on. A key names a table and a row: `NAMESPACE.TABLE:KEY`, where KEY
//! is the primary key's value as text (`42`, `alice`) or, for a composite key, a JSON object
//! of its columns. Every read is a FRESH lookup (every acknowledged write is reflected), the
//! same as the gRPC `Lookup`:
//!
//! - `GET key` / `MGET key...`: the row as one JSON object (the changelog's JSON mapping), or
//!   nil when the key has no live row.
//! - `HGET key column`, `HMGET key column...`, `HGETALL key`: a row's columns as text, as a
//!   Redis hash (nil or absent for a missing row, column or null value).
//! - `EXISTS key...`: how many of the keys have a live row.
//! - `AUTH [user] token` with a unitable token (`unitable token create`), unless the server
//!   allows anonymous callers; grants are checked per table on every command, and a revoked
//!   token stops working at once. `PING`, `ECHO`, `HELLO 2`, `SELECT 0`, `CLIENT SETNAME`,
//!   `INFO`, `COMMAND` and `QUIT` answer as client libraries expect.
//!
//! With `--tls-cert` the endpoint speaks TLS (the same certificate as gRPC; Redis clients
//! connect with their TLS option, `redis-cli --tls`). With `--tls-client-ca` a client may show
//! a certificate instead of sending `AUTH`: its DNS name is the user, as over gRPC.
//!
//! Writes are refused: rows are written through the Write API, so the changelog stays the
//! one way in. Commands of one connection are answered in order; pipelined commands are read
//! together and their replies written together.

mod codec;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use unitable_core::naming::TableName;
use unitable_reader::{LookupKeys, LookupRequest, ReadError, Reader};

use prost::Message;
use unitable_proto::v1 as wire;

use crate::access::audit::Outcome;
use crate::access::{Access, AuthMethod, Principal, Privilege};
use crate::grpc::read::{lookup_mode, metered_lookup};
use crate::grpc::table_name;
use crate::status::ApiError;
use codec::{ProtocolError, Reply};

const COMMANDS: &str = "unitable_resp_commands_total";
const CONNECTIONS: &str = "unitable_resp_connections";

/// Numbers connections (`CLIENT ID`, `HELLO`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections on `listener` until `shutdown`, serving each on a task of its own,
/// over TLS when `tls` is given.
pub(crate) async fn serve_resp(
    listener: TcpListener,
    reader: Reader,
    access: Access,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: say so, and go on after a pause.
                tracing::warn!("RESP endpoint cannot accept a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY on a RESP connection: {e}");
        }
        let who = access.allow_anonymous().then_some(Principal::Anonymous);
        let connection = Connection {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            reader: reader.clone(),
            access: access.clone(),
            who,
        };
        let shutdown = shutdown.child_token();
        match &tls {
            None => tokio::spawn(connection.run(stream, shutdown)),
            // The handshake runs on the connection's task: a slow client never holds up the
            // accept loop.
            Some(tls) => tokio::spawn(connection.run_tls(tls.clone(), stream, shutdown)),
        };
    }
}

/// One client connection.
struct Connection {
    id: u64,
    reader: Reader,
    access: Access,
    /// Who the connection is, once known (at once when anonymous callers are allowed).
    who: Option<Principal>,
}

impl Connection {
    /// [`Connection::run`] after a TLS handshake (limited to [`HANDSHAKE_TIMEOUT`]); a client
    /// certificate naming a user authenticates the connection as that user.
    async fn run_tls(mut self, tls: TlsAcceptor, stream: TcpStream, shutdown: CancellationToken) {
        let peer = stream.peer_addr().ok();
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::info!(
                    ?peer,
                    "RESP TLS handshake failed (a plaintext client, or an untrusted certificate?): {e}"
                );
                return;
            }
            Err(_) => {
                tracing::info!(
                    ?peer,
                    "RESP TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}; closing"
                );
                return;
            }
        };
        if let Some(cert) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
        {
            match crate::access::auth::certificate_principal(cert) {
                Some(principal) => self.who = Some(principal),
                None => tracing::info!(
                    ?peer,
                    "the RESP client's certificate names no user (it needs a DNS subject-alternative name); AUTH is still needed"
                ),
            }
        }
        self.run(stream, shutdown).await;
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        mut stream: S,
        shutdown: CancellationToken,
    ) {
        metrics::gauge!(CONNECTIONS).increment(1.0);
        let mut input = BytesMut::with_capacity(4096);
        let mut output = Vec::with_capacity(4096);
        'connection: loop {
            // Answer every whole command received, then send the replies together.
            let mut close = false;
            loop {
                match codec::next_command(&mut input) {
                    Ok(Some(args)) if args.is_empty() => {}
                    Ok(Some(args)) => {
                        let (reply, quit) = self.execute(&args).await;
                        reply.write(&mut output);
                        if quit {
                            close = true;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(ProtocolError(reason)) => {
                        Reply::Error(format!("ERR Protocol error: {reason}")).write(&mut output);
                        close = true;
                        break;
                    }
                }
            }
            if !output.is_empty() {
                if stream.write_all(&output).await.is_err() {
                    break 'connection;
                }
                output.clear();
            }
            if close {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                read = stream.read_buf(&mut input) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
            }
        }
        metrics::gauge!(CONNECTIONS).decrement(1.0);
    }

    /// The reply to one command, and whether to close the connection after it.
    async fn execute(&mut self, args: &[Vec<u8>]) -> (Reply, bool) {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        command_counter(&name).increment(1);
        let rest = &args[1..];
        let reply = match name.as_str() {
            "PING" => match rest {
                [] => Reply::Status("PONG"),
                [message] => Reply::Bulk(Some(message.clone())),
                _ => arity(&name),
            },
            "ECHO" => match rest {
                [message] => Reply::Bulk(Some(message.clone())),
                _ => arity(&name),
            },
            "QUIT" => return (Reply::Status("OK"), true),
            "AUTH" => match rest {
                [token] => self.auth(None, token),
                [user, token] => self.auth(Some(user), token),
                _ => arity(&name),
            },
            "HELLO" => self.hello(rest),
            "SELECT" => match rest {
                [db] if db.as_slice() == b"0" => Reply::Status("OK"),
                [_] => Reply::err(
                    "DB index is out of range: unitable names tables in keys (TABLE:KEY), \
                     not in numbered databases; use database 0",
                ),
                _ => arity(&name),
            },
            "CLIENT" => self.client(rest),
            "COMMAND" => Reply::Array(Vec::new()),
            "INFO" => Reply::Bulk(Some(
                format!(
                    "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n\
                     unitable_version:{}\r\n",
                    env!("CARGO_PKG_VERSION")
                )
                .into_bytes(),
            )),
            "GET" | "EXISTS" | "MGET" | "HGET" | "HMGET" | "HGETALL" => {
                self.read(&name, rest).await
            }
            "UT.LOOKUP" => match rest {
                [request] => self.lookup_rpc(request).await,
                _ => arity(&name),
            },
            _ if WRITES.contains(&name.as_str()) => Reply::err(format!(
                "'{name}': unitable's RESP endpoint is read-only; write rows through the \
                 Write API (`unitable write`, the Python SDK's write)"
            )),
            _ => Reply::err(format!(
                "unknown command '{}'; unitable serves GET, MGET, EXISTS, HGET, HMGET and \
                 HGETALL of table rows (keys are NAMESPACE.TABLE:KEY), and AUTH, PING, \
                 SELECT 0, QUIT",
                name.escape_default()
            )),
        };
        (reply, false)
    }

    /// `AUTH [user] token`: the password is a unitable token; a user, if named, must be the
    /// token's.
    fn auth(&mut self, user: Option<&Vec<u8>>, token: &[u8]) -> Reply {
        let token = String::from_utf8_lossy(token);
        let user = user.map(|u| String::from_utf8_lossy(u).into_owned());
        let policy = self.access.policy();
        let found = policy.authenticate(&token).map(str::to_string);
        let refused = match (&found, &user) {
            (None, _) => Some("the token is unknown, malformed or revoked".to_string()),
            (Some(owner), Some(named)) if named != owner && named != "default" => {
                Some(format!("the token is `{owner}`'s, not `{named}`'s"))
            }
            _ => None,
        };
        match (found, refused) {
            (Some(name), None) => {
                self.who = Some(Principal::User {
                    name,
                    via: AuthMethod::Token,
                    token_id: crate::access::token::parse(&token).map(|p| p.id.to_string()),
                });
                Reply::Status("OK")
            }
            (_, refused) => {
                let reason = refused.unwrap_or_default();
                self.access.audit().record(
                    "(unauthenticated)",
                    "authenticate",
                    None,
                    Outcome::Unauthenticated,
                    Some(&reason),
                );
                Reply::Error(format!(
                    "WRONGPASS {reason}; the password is a unitable token (`unitable token \
                     create USER`)"
                ))
            }
        }
    }

    /// `HELLO [2 [AUTH user token] [SETNAME name]]`: RESP2 only.
    fn hello(&mut self, args: &[Vec<u8>]) -> Reply {
        if let Some(version) = args.first()
            && version.as_slice() != b"2"
        {
            return Reply::Error(
                "NOPROTO unitable speaks RESP2 only: connect with protocol 2".to_string(),
            );
        }
        let mut i = 1;
        while i < args.len() {
            match String::from_utf8_lossy(&args[i])
                .to_ascii_uppercase()
                .as_str()
            {
                "AUTH" if i + 2 < args.len() => {
                    let reply = self.auth(Some(&args[i + 1]), &args[i + 2]);
                    if matches!(reply, Reply::Error(_)) {
                        return reply;
                    }
                    i += 3;
                }
                "SETNAME" if i + 1 < args.len() => i += 2,
                other => {
                    return Reply::err(format!(
                        "HELLO takes [2 [AUTH user token] [SETNAME name]], not '{}'",
                        other.escape_default()
                    ));
                }
            }
        }
        let text = |s: &str| Reply::Bulk(Some(s.as_bytes().to_vec()));
        Reply::Array(vec![
            text("server"),
            text("unitable"),
            text("version"),
            text(env!("CARGO_PKG_VERSION")),
            text("proto"),
            Reply::Integer(2),
            text("id"),
            Reply::Integer(self.id as i64),
            text("mode"),
            text("standalone"),
            text("role"),
            text("master"),
            text("modules"),
            Reply::Array(Vec::new()),
        ])
    }

    /// `CLIENT SETNAME | SETINFO | GETNAME | ID`, as client libraries send them on connecting.
    fn client(&self, args: &[Vec<u8>]) -> Reply {
        let sub = args
            .first()
            .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
        match sub.as_deref() {
            Some("SETNAME" | "SETINFO") => Reply::Status("OK"),
            Some("GETNAME") => Reply::Bulk(None),
            Some("ID") => Reply::Integer(self.id as i64),
            _ => Reply::err("unitable answers CLIENT SETNAME, SETINFO, GETNAME and ID only"),
        }
    }

    /// GET, MGET, EXISTS, HGET, HMGET, HGETALL.
    async fn read(&self, name: &str, args: &[Vec<u8>]) -> Reply {
        let (keys, columns): (&[Vec<u8>], &[Vec<u8>]) = match (name, args) {
            ("GET" | "HGETALL", [_]) => (args, &[]),
            ("MGET" | "EXISTS", [_, ..]) => (args, &[]),
            ("HGET", [_, _]) | ("HMGET", [_, _, ..]) => (&args[..1], &args[1..]),
            _ => return arity(name),
        };
        let Some(who) = &self.who else {
            return Reply::Error(
                "NOAUTH Authentication required: AUTH with a unitable token (`unitable token \
                 create USER`)"
                    .to_string(),
            );
        };
        let rows = match self.lookup(who, keys).await {
            Ok(rows) => rows,
            Err(reply) => return reply,
        };
        let columns: Vec<String> = columns
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        match name {
            "GET" | "MGET" => {
                let json = match json_rows(&rows) {
                    Ok(json) => json,
                    Err(e) => return Reply::err(e),
                };
                let mut values = json.into_iter().map(Reply::Bulk);
                if name == "GET" {
                    values.next().unwrap_or(Reply::Bulk(None))
                } else {
                    Reply::Array(values.collect())
                }
            }
            "EXISTS" => Reply::Integer(rows.iter().filter(|r| r.is_some()).count() as i64),
            "HGET" | "HMGET" => {
                let row = rows.first().and_then(Option::as_ref);
                let mut values = columns
                    .iter()
                    .map(|c| Reply::Bulk(row.and_then(|r| r.text(c))));
                if name == "HGET" {
                    values.next().unwrap_or(Reply::Bulk(None))
                } else {
                    Reply::Array(values.collect())
                }
            }
            _ => {
                let Some(row) = rows.first().and_then(Option::as_ref) else {
                    return Reply::Array(Vec::new());
                };
                let mut pairs = Vec::new();
                for field in row.batch.schema().fields() {
                    if let Some(value) = row.text(field.name()) {
                        pairs.push(Reply::Bulk(Some(field.name().as_bytes().to_vec())));
                        pairs.push(Reply::Bulk(Some(value)));
                    }
                }
                Reply::Array(pairs)
            }
        }
    }

    /// `UT.LOOKUP request`: the unary `Lookup` RPC over RESP framing. The argument is an
    /// encoded `unitable.v1.ReadRequest`, the reply an encoded `unitable.v1.ReadResponse`
    /// (Arrow IPC rows, missing keys, `AsOf`), or an error whose first word is the gRPC status
    /// code (`INVALID_ARGUMENT ...`). The SDK uses it for point lookups: one round trip with
    /// no HTTP/2, the same answers.
    async fn lookup_rpc(&self, request: &[u8]) -> Reply {
        let Some(who) = &self.who else {
            return Reply::Error(
                "UNAUTHENTICATED AUTH with a unitable token first (`unitable token create USER`)"
                    .to_string(),
            );
        };
        let request = match wire::ReadRequest::decode(request) {
            Ok(request) => request,
            Err(e) => {
                return Reply::Error(format!(
                    "INVALID_ARGUMENT the argument is not an encoded unitable.v1.ReadRequest: {e}"
                ));
            }
        };
        let answer = async {
            let table = table_name(&request.table)?;
            lookup_mode(&request)?;
            self.access
                .recheck(who, Privilege::Read, std::slice::from_ref(&table), "Lookup")?;
            metered_lookup(&self.reader, table, request).await
        };
        match answer.await {
            Ok(response) => Reply::Bulk(Some(response.encode_to_vec())),
            Err(status) => {
                Reply::Error(format!("{} {}", code_name(status.code()), status.message()))
            }
        }
    }

    /// The live row of each key (`None`: no live row), in key order: one FRESH lookup per
    /// table the keys name.
    async fn lookup(&self, who: &Principal, keys: &[Vec<u8>]) -> Result<Vec<Option<Row>>, Reply> {
        let mut by_table: BTreeMap<TableName, Vec<(usize, String)>> = BTreeMap::new();
        // An MGET's keys mostly name one table: its name is checked once.
        let mut last: Option<(&str, TableName)> = None;
        for (i, key) in keys.iter().enumerate() {
            let (table_text, text) = split_key(key)?;
            let table = match &last {
                Some((t, table)) if *t == table_text => table.clone(),
                _ => {
                    let table = parse_table(key, table_text)?;
                    last = Some((table_text, table.clone()));
                    table
                }
            };
            by_table
                .entry(table)
                .or_default()
                .push((i, text.to_string()));
        }
        let mut rows: Vec<Option<Row>> = (0..keys.len()).map(|_| None).collect();
        for (answer_no, (table, wanted)) in by_table.into_iter().enumerate() {
            if let Err(e) =
                self.access
                    .recheck(who, Privilege::Read, std::slice::from_ref(&table), "Lookup")
            {
                return Err(access_error(&e));
            }
            let (at, texts): (Vec<usize>, Vec<String>) = wanted.into_iter().unzip();
            let request = LookupRequest {
                table: table.clone(),
                keys: LookupKeys::Text(texts),
                columns: Vec::new(),
                as_of: None,
                max_staleness: None,
            };
            let answer = match self.reader.lookup(&request).await {
                Ok(answer) => answer,
                Err(ReadError::InvalidKey {
                    index,
                    field,
                    reason,
                }) => {
                    let key = at
                        .get(index)
                        .map(|i| String::from_utf8_lossy(&keys[*i]).into_owned())
                        .unwrap_or_default();
                    let field = field.map(|f| format!(" column `{f}`:")).unwrap_or_default();
                    return Err(Reply::err(format!("key '{key}':{field} {reason}")));
                }
                Err(e) => return Err(Reply::err(ApiError::from(e).to_string())),
            };
            if answer.rows.num_rows() + answer.missing.len() != at.len() {
                return Err(Reply::err(format!(
                    "the lookup in {table} answered {} rows and {} missing keys for {} keys",
                    answer.rows.num_rows(),
                    answer.missing.len(),
                    at.len()
                )));
            }
            let mut found = 0usize;
            let mut missing = answer.missing.iter().peekable();
            for (n, at) in at.iter().enumerate() {
                if missing.peek().is_some_and(|&&m| m as usize == n) {
                    missing.next();
                    continue;
                }
                rows[*at] = Some(Row {
                    batch: answer.rows.clone(),
                    answer: answer_no,
                    index: found,
                });
                found += 1;
            }
        }
        Ok(rows)
    }
}

/// A found row: row `index` of `batch`, the rows of the request's lookup number `answer`.
struct Row {
    batch: RecordBatch,
    answer: usize,
    index: usize,
}

impl Row {
    /// The value of `column` as text; `None` when it is null or there is no such column.
    fn text(&self, column: &str) -> Option<Vec<u8>> {
        let array = self.batch.column_by_name(column)?;
        if array.is_null(self.index) {
            return None;
        }
        let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).ok()?;
        Some(formatter.value(self.index).to_string().into_bytes())
    }
}

/// Each row as a JSON object (the changelog's JSON mapping); `None` for a missing row.
fn json_rows(rows: &[Option<Row>]) -> Result<Vec<Option<Vec<u8>>>, String> {
    // Each lookup's batch is rendered once, a line per row (the writer escapes newlines inside
    // values), not a writer per row.
    let mut rendered: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(row) = row else {
            out.push(None);
            continue;
        };
        let lines = match rendered.entry(row.answer) {
            std::collections::btree_map::Entry::Occupied(lines) => lines.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(json_lines(&row.batch)?)
            }
        };
        let line = lines.get(row.index).cloned().ok_or_else(|| {
            format!(
                "row {} of a lookup's {} rows has no JSON line",
                row.index,
                row.batch.num_rows()
            )
        })?;
        out.push(Some(line));
    }
    Ok(out)
}

/// Each row of `batch` as a JSON object (nulls written out).
fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, String> {
    if let Some(lines) = plain_json_lines(batch) {
        return Ok(lines);
    }
    arrow_json_lines(batch)
}

/// [`json_lines`] for a batch of integer, boolean and string columns only, written directly:
/// the same text as Arrow's JSON writer gives (tested against it), without building its
/// encoders for every request. `None` when another type is present.
fn plain_json_lines(batch: &RecordBatch) -> Option<Vec<Vec<u8>>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType as T, *};
    enum Column<'a> {
        Int(Box<dyn Fn(usize) -> i128 + 'a>),
        Bool(&'a arrow::array::BooleanArray),
        Str(Box<dyn Fn(usize) -> &'a str + 'a>),
    }
    let schema = batch.schema();
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        let a = array.as_ref();
        macro_rules! int {
            ($t:ty) => {{
                let values = a.as_primitive::<$t>();
                Column::Int(Box::new(move |i| i128::from(values.value(i))))
            }};
        }
        let column = match field.data_type() {
            T::Int8 => int!(Int8Type),
            T::Int16 => int!(Int16Type),
            T::Int32 => int!(Int32Type),
            T::Int64 => int!(Int64Type),
            T::UInt8 => int!(UInt8Type),
            T::UInt16 => int!(UInt16Type),
            T::UInt32 => int!(UInt32Type),
            T::UInt64 => int!(UInt64Type),
            T::Boolean => Column::Bool(a.as_boolean()),
            T::Utf8 => {
                let values = a.as_string::<i32>();
                Column::Str(Box::new(move |i| values.value(i)))
            }
            T::LargeUtf8 => {
                let values = a.as_string::<i64>();
                Column::Str(Box::new(move |i| values.value(i)))
            }
            _ => return None,
        };
        let mut name = Vec::with_capacity(field.name().len() + 3);
        serde_json::to_writer(&mut name, field.name()).ok()?;
        name.push(b':');
        columns.push((name, array, column));
    }
    let mut lines = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut out = Vec::with_capacity(16 * columns.len() + 2);
        out.push(b'{');
        for (n, (name, array, column)) in columns.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name);
            if array.is_null(row) {
                out.extend_from_slice(b"null");
                continue;
            }
            match column {
                Column::Int(value) => {
                    use std::io::Write;
                    write!(out, "{}", value(row)).ok()?
                }
                Column::Bool(values) => {
                    out.extend_from_slice(if values.value(row) { b"true" } else { b"false" })
                }
                Column::Str(value) => serde_json::to_writer(&mut out, value(row)).ok()?,
            }
        }
        out.push(b'}');
        lines.push(out);
    }
    Some(lines)
}

/// [`json_lines`] by Arrow's JSON writer, for any type.
fn arrow_json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, String> {
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::LineDelimited>(Vec::new());
    writer
        .write(batch)
        .and_then(|()| writer.finish())
        .map_err(|e| format!("cannot render a row as JSON: {e}"))?;
    let text = writer.into_inner();
    let lines: Vec<Vec<u8>> = text
        .split(|&b| b == b'\n')
        .take(batch.num_rows())
        .map(<[u8]>::to_vec)
        .collect();
    if lines.len() != batch.num_rows() {
        return Err(format!(
            "rendering {} rows as JSON gave {} lines",
            batch.num_rows(),
            lines.len()
        ));
    }
    Ok(lines)
}

/// `NAMESPACE.TABLE:KEY` -> the table's name as written and the key text.
fn split_key(key: &[u8]) -> Result<(&str, &str), Reply> {
    let text = std::str::from_utf8(key).map_err(|_| {
        Reply::err(format!(
            "key '{}' is not UTF-8",
            String::from_utf8_lossy(key).escape_default()
        ))
    })?;
    text.split_once(':').ok_or_else(|| {
        Reply::err(format!(
            "key '{}' names no table: write NAMESPACE.TABLE:KEY, e.g. shop.users:42",
            text.escape_default()
        ))
    })
}

/// The table `table` of `key` names (as [`split_key`] found it).
fn parse_table(key: &[u8], table: &str) -> Result<TableName, Reply> {
    table.parse().map_err(|e| {
        Reply::err(format!(
            "key '{}': `{}` is not a table name ({e}); write NAMESPACE.TABLE:KEY",
            String::from_utf8_lossy(key).escape_default(),
            table.escape_default()
        ))
    })
}

/// A refused access check as a RESP error: NOAUTH for a token that no longer works, NOPERM
/// for a missing grant.
fn access_error(e: &ApiError) -> Reply {
    match e {
        ApiError::Unauthenticated { .. } => Reply::Error(format!("NOAUTH {e}")),
        _ => Reply::Error(format!("NOPERM {e}")),
    }
}

/// A gRPC status code as its name in the protocol (`INVALID_ARGUMENT`).
fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase().escape_default()
    ))
}

/// The counter of a command (unknown ones share one), registered once per process: a
/// registry lookup per command costs about as much as answering a GET from the cache.
fn command_counter(name: &str) -> &'static metrics::Counter {
    static COUNTERS: std::sync::OnceLock<Vec<metrics::Counter>> = std::sync::OnceLock::new();
    // One counter per known command, in order, then the one for all others.
    let counters = COUNTERS.get_or_init(|| {
        KNOWN_COMMANDS
            .iter()
            .chain(&["other"])
            .map(|&c| metrics::counter!(COMMANDS, "command" => c))
            .collect()
    });
    let at = KNOWN_COMMANDS
        .iter()
        .position(|k| *k == name)
        .unwrap_or(KNOWN_COMMANDS.len());
    &counters[at]
}

/// Commands with a label of their own in [`COMMANDS`].
const KNOWN_COMMANDS: [&str; 17] = [
    "GET",
    "MGET",
    "EXISTS",
    "HGET",
    "HMGET",
    "HGETALL",
    "UT.LOOKUP",
    "AUTH",
    "HELLO",
    "PING",
    "ECHO",
    "SELECT",
    "CLIENT",
    "COMMAND",
    "INFO",
    "QUIT",
    "SET",
];

/// Commands that would write, refused with a pointer to the Write API.
const WRITES: [&str; 18] = [
    "SET", "SETEX", "PSETEX", "SETNX", "MSET", "MSETNX", "DEL", "UNLINK", "HSET", "HMSET", "HDEL",
    "HSETNX", "INCR", "DECR", "INCRBY", "APPEND", "EXPIRE", "FLUSHDB",
];

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BooleanArray, Int8Array, Int32Array, Int64Array, LargeStringArray, StringArray,
        UInt64Array,
    };
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    /// The direct rendering gives byte for byte what Arrow's JSON writer gives.
    #[test]
    fn plain_rows_render_as_arrows_json_writer_does() {
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![
                    Some(i64::MIN),
                    Some(0),
                    None,
                    Some(i64::MAX),
                ])),
            ),
            (
                "small",
                Arc::new(Int8Array::from(vec![Some(-128), None, Some(7), Some(127)])),
            ),
            (
                "n",
                Arc::new(Int32Array::from(vec![
                    Some(1),
                    Some(-1),
                    Some(i32::MAX),
                    None,
                ])),
            ),
            (
                "u",
                Arc::new(UInt64Array::from(vec![
                    Some(u64::MAX),
                    Some(0),
                    None,
                    Some(5),
                ])),
            ),
            (
                "ok",
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    None,
                    Some(false),
                    Some(true),
                ])),
            ),
            (
                "v",
                Arc::new(StringArray::from(vec![
                    Some("plain"),
                    Some("quote \" back \\ slash / tab\t nl\n cr\r bell\u{7} del\u{7f}"),
                    None,
                    Some("π ✓ \u{1F600} \u{2028}"),
                ])),
            ),
            (
                "w",
                Arc::new(LargeStringArray::from(vec![
                    None,
                    Some(""),
                    Some("x"),
                    Some("\u{0}"),
                ])),
            ),
            ("odd \"name\"", Arc::new(Int64Array::from(vec![1, 2, 3, 4]))),
        ];
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch =
            RecordBatch::try_new(schema, columns.into_iter().map(|(_, a)| a).collect()).unwrap();
        let direct = plain_json_lines(&batch).expect("plain types render directly");
        assert_eq!(direct, arrow_json_lines(&batch).unwrap());
        // Slices (one key's row out of a block) too.
        let one = batch.slice(2, 1);
        assert_eq!(
            plain_json_lines(&one).unwrap(),
            arrow_json_lines(&one).unwrap()
        );
        // Other types go to Arrow's writer.
        let floats = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("f", DataType::Float64, true)])),
            vec![Arc::new(arrow::array::Float64Array::from(vec![1.5]))],
        )
        .unwrap();
        assert!(plain_json_lines(&floats).is_none());
        assert_eq!(json_lines(&floats).unwrap(), vec![br#"{"f":1.5}"#.to_vec()]);
    }
}
