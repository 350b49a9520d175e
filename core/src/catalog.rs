//! The Iceberg catalog: opening it from a URI and the table operations unitable needs.
//!
//! Catalog URIs: `sqlite://PATH` (relative or absolute path; the embedded default),
//! `postgres://USER:PASS@HOST/DB` (the same SQL catalog layout, `iceberg_tables` and
//! `iceberg_namespace_properties`, that PyIceberg's `SqlCatalog` uses) and `http(s)://...`
//! (an Iceberg REST catalog).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::{Catalog, CatalogBuilder, ErrorKind, NamespaceIdent};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};

use crate::error::{Error, Result};
use crate::naming::TableName;
use crate::storage::ObjectStoreStorageFactory;
use crate::table::{Column, TableDef, TableState};

/// The catalog name rows are stored under in the SQL catalog (PyIceberg: `SqlCatalog("unitable", ...)`).
pub const CATALOG_NAME: &str = "unitable";

/// How to reach the catalog and the warehouse.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// `sqlite://PATH`, `postgres://...` or `http(s)://...`.
    pub uri: String,
    /// Where new tables are placed: `file:///abs/dir`, `s3://bucket/prefix` or `memory://name/prefix`.
    pub warehouse: String,
    /// Iceberg storage properties (`s3.endpoint`, `s3.region`, ...), also passed to the catalog.
    pub storage_props: HashMap<String, String>,
}

impl CatalogConfig {
    /// The embedded default: a SQLite catalog and a local warehouse inside `data_dir`.
    pub fn embedded(data_dir: &Path) -> Self {
        Self {
            uri: format!("sqlite://{}", data_dir.join("catalog.db").display()),
            warehouse: format!("file://{}", data_dir.join("warehouse").display()),
            storage_props: HashMap::new(),
        }
    }
}

/// SQL dialects of the SQL catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    /// SQLite (`?` placeholders).
    Sqlite,
    /// Postgres (`$n` placeholders).
    Postgres,
}

impl SqlDialect {
    /// `text`, written with `$n` placeholders, as the dialect wants it (SQLite: `?`, in order;
    /// every `$n` must appear once, in ascending order).
    pub fn placeholders(self, text: &str) -> String {
        match self {
            SqlDialect::Postgres => text.to_string(),
            SqlDialect::Sqlite => {
                let mut out = String::with_capacity(text.len());
                let mut chars = text.chars().peekable();
                while let Some(c) = chars.next() {
                    if c == '$' {
                        while chars.peek().is_some_and(char::is_ascii_digit) {
                            chars.next();
                        }
                        out.push('?');
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }
}

/// The database URL of a SQL catalog URI, with its dialect; `None` for REST catalogs.
pub fn sql_url(uri: &str) -> Result<Option<(String, SqlDialect)>> {
    Ok(match classify(uri)? {
        CatalogKind::Sqlite(path) => Some((sqlite_url(&path), SqlDialect::Sqlite)),
        CatalogKind::Postgres => Some((uri.to_string(), SqlDialect::Postgres)),
        CatalogKind::Rest => None,
    })
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Puts the database of a SQLite catalog URI in WAL mode, which the file keeps. In the default
/// rollback-journal mode a reader waits for a writer and a writer for its readers, and a wait
/// longer than the busy timeout (5 s) fails with "database is locked": the committers, lease
/// rounds and request log of several nodes sharing one catalog file on a loaded machine got
/// there. With WAL, readers and the writer do not block each other; writers still take turns.
/// Other processes (PyIceberg, Spark's JDBC catalog) read a WAL database as before. Does
/// nothing for other catalogs. Failing to switch (another process holds the file) only logs a
/// warning: the catalog works in either mode.
pub(crate) async fn prepare_sqlite(uri: &str) -> Result<()> {
    use sqlx::ConnectOptions;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    let CatalogKind::Sqlite(path) = classify(uri)? else {
        return Ok(());
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::InvalidUri {
            what: "catalog",
            uri: uri.to_string(),
            reason: format!("cannot create {}: {e}", dir.display()),
        })?;
    }
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let mut last = String::new();
    for attempt in 0..10u64 {
        match options.connect().await {
            Ok(conn) => {
                let _ = sqlx::Connection::close(conn).await;
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50 * (attempt + 1))).await;
    }
    tracing::warn!(catalog = %uri, error = %last, "cannot switch the SQLite catalog to WAL mode; going on in its current mode");
    Ok(())
}

enum CatalogKind {
    Sqlite(PathBuf),
    Postgres,
    Rest,
}

fn classify(uri: &str) -> Result<CatalogKind> {
    let bad = |reason: &str| Error::InvalidUri {
        what: "catalog",
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    if let Some(path) = uri.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or("");
        if path.is_empty() {
            return Err(bad(
                "missing the database file, as in sqlite://./data/catalog.db",
            ));
        }
        let abs = std::path::absolute(PathBuf::from(path))
            .map_err(|e| bad(&format!("cannot resolve the path: {e}")))?;
        return Ok(CatalogKind::Sqlite(abs));
    }
    if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        return Ok(CatalogKind::Postgres);
    }
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return Ok(CatalogKind::Rest);
    }
    Err(bad(
        "expected sqlite://PATH, postgres://... or http(s)://... (REST)",
    ))
}

fn check_warehouse(warehouse: &str) -> Result<()> {
    let ok = ["file://", "s3://", "s3a://", "memory://"]
        .iter()
        .any(|p| warehouse.starts_with(p));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidUri {
            what: "warehouse",
            uri: warehouse.to_string(),
            reason: "expected file:///ABSOLUTE/PATH, s3://bucket/prefix or memory://name".into(),
        })
    }
}

/// The Iceberg catalog, with the table operations unitable needs.
#[derive(Debug, Clone)]
pub struct TableCatalog {
    catalog: Arc<dyn Catalog>,
    config: CatalogConfig,
}

impl TableCatalog {
    /// Opens (and for SQLite, creates) the catalog.
    pub async fn open(config: CatalogConfig) -> Result<Self> {
        check_warehouse(&config.warehouse)?;
        let mut props = config.storage_props.clone();
        props.insert(
            "warehouse".into(),
            config.warehouse.trim_end_matches('/').into(),
        );
        let factory = Arc::new(ObjectStoreStorageFactory);
        let catalog: Arc<dyn Catalog> = match classify(&config.uri)? {
            CatalogKind::Sqlite(path) => {
                prepare_sqlite(&config.uri).await?;
                props.insert(
                    "uri".into(),
                    format!("sqlite://{}?mode=rwc", path.display()),
                );
                let catalog = SqlCatalogBuilder::default()
                    .sql_bind_style(SqlBindStyle::QMark)
                    .with_storage_factory(factory)
                    .load(CATALOG_NAME, props)
                    .await
                    .map_err(|e| Error::catalog(format!("open {}", config.uri), e))?;
                Arc::new(catalog)
            }
            CatalogKind::Postgres => {
                props.insert("uri".into(), config.uri.clone());
                let catalog = SqlCatalogBuilder::default()
                    .sql_bind_style(SqlBindStyle::DollarNumeric)
                    .with_storage_factory(factory)
                    .load(CATALOG_NAME, props)
                    .await
                    .map_err(|e| Error::catalog(format!("open {}", config.uri), e))?;
                Arc::new(catalog)
            }
            CatalogKind::Rest => {
                props.insert("uri".into(), config.uri.clone());
                let catalog = RestCatalogBuilder::default()
                    .with_storage_factory(factory)
                    .load(CATALOG_NAME, props)
                    .await
                    .map_err(|e| Error::catalog(format!("open {}", config.uri), e))?;
                Arc::new(catalog)
            }
        };
        Ok(Self { catalog, config })
    }

    /// The underlying iceberg-rust catalog.
    pub fn iceberg(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// The configuration the catalog was opened with.
    pub fn config(&self) -> &CatalogConfig {
        &self.config
    }

    /// Loads the iceberg-rust table.
    pub async fn load(&self, name: &TableName) -> Result<iceberg::table::Table> {
        self.catalog
            .load_table(&name.to_ident())
            .await
            .map_err(|e| map_table_error(name, "load table", e))
    }

    /// The table's definition and current state.
    pub async fn describe(&self, name: &TableName) -> Result<TableState> {
        let table = self.load(name).await?;
        TableState::from_table(name.clone(), &table)
    }

    /// Whether the table exists.
    pub async fn exists(&self, name: &TableName) -> Result<bool> {
        self.catalog
            .table_exists(&name.to_ident())
            .await
            .map_err(|e| Error::catalog(format!("check table {name}"), e))
    }

    /// Creates the Iceberg table (and its namespace if needed).
    pub async fn create(&self, def: &TableDef) -> Result<TableState> {
        let ns = def.name.namespace_ident();
        let ns_exists =
            self.catalog.namespace_exists(&ns).await.map_err(|e| {
                Error::catalog(format!("check namespace {}", def.name.namespace()), e)
            })?;
        if !ns_exists {
            match self.catalog.create_namespace(&ns, HashMap::new()).await {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NamespaceAlreadyExists => {}
                Err(e) => {
                    return Err(Error::catalog(
                        format!("create namespace {}", def.name.namespace()),
                        e,
                    ));
                }
            }
        }
        let table = self
            .catalog
            .create_table(&ns, def.to_table_creation(None)?)
            .await
            .map_err(|e| map_table_error(&def.name, "create table", e))?;
        TableState::from_table(def.name.clone(), &table)
    }

    /// All tables, optionally of one namespace, sorted by name.
    pub async fn list(&self, namespace: Option<&str>) -> Result<Vec<TableName>> {
        let namespaces = match namespace {
            Some(ns) => vec![NamespaceIdent::new(ns.to_string())],
            None => self
                .catalog
                .list_namespaces(None)
                .await
                .map_err(|e| Error::catalog("list namespaces", e))?,
        };
        let mut out = Vec::new();
        for ns in namespaces {
            let tables = match self.catalog.list_tables(&ns).await {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NamespaceNotFound => continue,
                Err(e) => {
                    return Err(Error::catalog(
                        format!("list tables of {}", ns.join(".")),
                        e,
                    ));
                }
            };
            for ident in tables {
                // Tables whose names unitable cannot address (other tools' tables) are skipped.
                if let Ok(name) = TableName::new(&ident.namespace().join("."), ident.name()) {
                    out.push(name);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Drops the table; with `purge` its data and metadata files are deleted too.
    pub async fn drop(&self, name: &TableName, purge: bool) -> Result<()> {
        let ident = name.to_ident();
        let result = if purge {
            self.catalog.purge_table(&ident).await
        } else {
            self.catalog.drop_table(&ident).await
        };
        result.map_err(|e| map_table_error(name, "drop table", e))
    }

    /// Adds a nullable column at the end of the schema.
    pub async fn add_column(&self, name: &TableName, column: &Column) -> Result<TableState> {
        let table = self.load(name).await?;
        let current = TableState::from_table(name.clone(), &table)?;
        if current
            .def
            .columns
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(&column.name))
        {
            return Err(Error::invalid_definition(
                name,
                format!("column `{}` already exists", column.name),
            ));
        }
        if column.required {
            return Err(Error::invalid_definition(
                name,
                format!(
                    "added column `{}` must be nullable: existing rows have no value for it (drop the `!`)",
                    column.name
                ),
            ));
        }
        // Validate the name with the same rules as creation.
        let mut probe = current.def.clone();
        probe.columns.push(column.clone());
        revalidate(name, probe)?;
        let mut add = AddColumn::optional(&column.name, column.ty.to_iceberg());
        if let Some(doc) = &column.doc {
            add = AddColumn::builder()
                .name(column.name.clone())
                .field_type(column.ty.to_iceberg())
                .doc(doc.clone())
                .build();
        }
        let tx = Transaction::new(&table);
        let tx = tx
            .update_schema()
            .add_column(add)
            .apply(tx)
            .map_err(|e| Error::catalog(format!("add column to {name}"), e))?;
        let table = tx
            .commit(self.catalog.as_ref())
            .await
            .map_err(|e| map_table_error(name, "add column", e))?;
        TableState::from_table(name.clone(), &table)
    }

    /// Sets the properties in `set` and removes those in `unset` in one metadata-only commit.
    /// Keys unitable manages are refused (except setting `unitable.changelog.format` to a
    /// known format: records of both formats decode), as are empty keys and a key both set and
    /// unset;
    /// removing a key that is not set does nothing. With nothing to change, nothing is
    /// committed.
    pub async fn alter_properties(
        &self,
        name: &TableName,
        set: &BTreeMap<String, String>,
        unset: &[String],
    ) -> Result<TableState> {
        let fail = |reason: String| Err(Error::invalid_definition(name, reason));
        if set.is_empty() && unset.is_empty() {
            return fail(
                "nothing to alter: give properties to set or to unset, or column changes".into(),
            );
        }
        for key in unset {
            if set.contains_key(key) {
                return fail(format!("property `{key}` is both set and unset"));
            }
            if crate::naming::props::RESERVED.contains(&key.as_str()) {
                return fail(format!(
                    "property `{key}` is managed by unitable and cannot be unset"
                ));
            }
        }
        // The changelog format is the one managed key a user may set: readers decode both
        // formats, so records of either can follow each other in one topic.
        let mut set = set.clone();
        let format = match set.remove(crate::naming::props::CHANGELOG_FORMAT) {
            None => None,
            Some(f) => Some(crate::table::RecordFormat::parse(&f).ok_or_else(|| {
                Error::invalid_definition(
                    name,
                    format!("unknown changelog format `{f}`; use json-v1 or avro-v1"),
                )
            })?),
        };
        let set = &set;
        let table = self.load(name).await?;
        let current = TableState::from_table(name.clone(), &table)?;
        // The same rules as creation (empty and reserved keys).
        let mut probe = current.def.clone();
        probe.properties.extend(set.clone());
        for key in unset {
            probe.properties.remove(key);
        }
        revalidate(name, probe)?;
        let format = format.filter(|f| *f != current.def.changelog.format);
        let removed: Vec<&String> = unset
            .iter()
            .filter(|k| current.def.properties.contains_key(*k))
            .collect();
        let changed = set
            .iter()
            .any(|(k, v)| current.def.properties.get(k) != Some(v));
        if !changed && removed.is_empty() && format.is_none() {
            return Ok(current);
        }
        let tx = Transaction::new(&table);
        let mut action = tx.update_table_properties();
        if let Some(format) = format {
            action = action.set(
                crate::naming::props::CHANGELOG_FORMAT.to_string(),
                format.as_str().to_string(),
            );
        }
        for (key, value) in set {
            action = action.set(key.clone(), value.clone());
        }
        for key in removed {
            action = action.remove(key.clone());
        }
        let tx = action
            .apply(tx)
            .map_err(|e| Error::catalog(format!("alter the properties of {name}"), e))?;
        let table = tx
            .commit(self.catalog.as_ref())
            .await
            .map_err(|e| map_table_error(name, "alter properties", e))?;
        TableState::from_table(name.clone(), &table)
    }
}

/// Checks a changed definition with the rules of creation ([`TableDef::new`]).
fn revalidate(name: &TableName, def: TableDef) -> Result<()> {
    TableDef::new(
        name.clone(),
        crate::table::TableSpec {
            columns: def.columns,
            primary_key: def.primary_key,
            buckets: Some(def.buckets),
            partition_by: def.partition_by,
            properties: def.properties,
            changelog_format: def.changelog.format,
        },
    )?;
    Ok(())
}

/// Maps iceberg's not-found / already-exists errors to unitable's.
fn map_table_error(name: &TableName, operation: &str, e: iceberg::Error) -> Error {
    match e.kind() {
        ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound => Error::TableNotFound {
            table: name.clone(),
        },
        ErrorKind::TableAlreadyExists => Error::TableAlreadyExists {
            table: name.clone(),
        },
        _ => Error::catalog(format!("{operation} {name}"), e),
    }
}

#[cfg(test)]
mod tests;
