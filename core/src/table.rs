//! The table model: columns, primary key, buckets, partition spec, changelog binding and free
//! properties, with the rules a definition must follow and its mapping to and from Iceberg.
//!
//! The Iceberg catalog is the only place a table definition is stored: the schema carries the
//! columns and the primary key (as identifier fields), table properties under `unitable.*`
//! carry the rest (see [`crate::naming::props`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use iceberg::TableCreation;
use iceberg::spec::{NestedField, Schema, TableMetadata, UnboundPartitionSpec};

use crate::changelog::TopicSettings;
use crate::changelog::routes::{self, ClosedGeneration, Route};
use crate::error::{Error, Result};
use crate::naming::{TableName, TopicName, props};
use crate::partition::{PartitionField, PartitionTransform};
use crate::types::ColumnType;

mod evolve;

pub use evolve::{ColumnChange, widens};

/// Buckets when a table definition does not say.
pub const DEFAULT_BUCKETS: u32 = 4;
/// The most buckets (= changelog partitions) a table may have.
pub const MAX_BUCKETS: u32 = 1024;
/// The longest column name accepted.
pub const MAX_COLUMN_NAME_LEN: usize = 128;

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The Iceberg field id (assigned at creation, stable across schema changes).
    pub field_id: i32,
    /// The column name.
    pub name: String,
    /// The column type.
    pub ty: ColumnType,
    /// Whether null is forbidden.
    pub required: bool,
    /// Optional documentation.
    pub doc: Option<String>,
}

impl Column {
    /// A column spec before ids are assigned.
    pub fn new(name: impl Into<String>, ty: ColumnType, required: bool) -> Self {
        Self {
            field_id: 0,
            name: name.into(),
            ty,
            required,
            doc: None,
        }
    }

    /// Parses the CLI form `NAME:TYPE[!]` (`!` = not null).
    pub fn parse(text: &str) -> Result<Self> {
        let (name, ty) = text.split_once(':').ok_or_else(|| {
            Error::invalid_definition(
                "",
                format!("column `{text}` must be written NAME:TYPE, e.g. `id:int64!`"),
            )
        })?;
        let name = name.trim();
        let (ty, required) = match ty.trim().strip_suffix('!') {
            Some(ty) => (ty, true),
            None => (ty.trim(), false),
        };
        Ok(Column::new(name, ColumnType::parse(name, ty)?, required))
    }

    /// The columns of an Iceberg schema, in schema order; an error names a column whose type
    /// unitable does not support.
    pub fn all_of(schema: &Schema) -> std::result::Result<Vec<Column>, String> {
        schema
            .as_struct()
            .fields()
            .iter()
            .map(|field| {
                let ty = ColumnType::from_iceberg(&field.field_type).ok_or_else(|| {
                    format!(
                        "column `{}` has unsupported type {}",
                        field.name, field.field_type
                    )
                })?;
                Ok(Column {
                    field_id: field.id,
                    name: field.name.clone(),
                    ty,
                    required: field.required,
                    doc: field.doc.clone(),
                })
            })
            .collect()
    }

    fn to_iceberg(&self) -> NestedField {
        let field = if self.required {
            NestedField::required(self.field_id, &self.name, self.ty.to_iceberg())
        } else {
            NestedField::optional(self.field_id, &self.name, self.ty.to_iceberg())
        };
        match &self.doc {
            Some(doc) => field.with_doc(doc),
            None => field,
        }
    }
}

/// How changelog records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordFormat {
    /// JSON key and value, op and schema in headers (docs/changelog-format.md).
    #[default]
    JsonV1,
    /// JSON key, Avro value in the Confluent wire framing, same headers
    /// (docs/changelog-format.md, "avro-v1").
    AvroV1,
}

impl RecordFormat {
    /// The name stored in table properties.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordFormat::JsonV1 => "json-v1",
            RecordFormat::AvroV1 => "avro-v1",
        }
    }

    /// The format of a name written by [`RecordFormat::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json-v1" => Some(RecordFormat::JsonV1),
            "avro-v1" => Some(RecordFormat::AvroV1),
            _ => None,
        }
    }
}

/// The changelog topic bound to a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogBinding {
    /// The topic.
    pub topic: TopicName,
    /// Its partition count (= the table's bucket count).
    pub partitions: u32,
    /// Its record format.
    pub format: RecordFormat,
    /// The named cluster the current generation lives on (`None`: the server's default
    /// cluster, as for tables created before clusters had names).
    pub cluster: Option<String>,
    /// The current generation (0 until the changelog first moves; see
    /// [`crate::changelog::routes`]).
    pub generation: u32,
    /// The generations the changelog left, oldest first.
    pub history: Vec<ClosedGeneration>,
    /// While a move is under way, the cluster it goes to.
    pub moving: Option<String>,
}

impl ChangelogBinding {
    /// The route of the changelog, as [`crate::changelog::routes`] keeps it.
    pub fn route(&self, table_uuid: &str, version: i64) -> Route {
        Route {
            table_uuid: table_uuid.to_string(),
            version,
            cluster: self.cluster.clone(),
            generation: self.generation,
            moving: self.moving.clone(),
            history: self.history.clone(),
        }
    }

    /// The Kafka topic of the current generation.
    pub fn current_topic(&self) -> TopicName {
        crate::changelog::routes::physical_topic(&self.topic, self.generation)
    }
}

/// A table definition: everything a user declares about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    /// The table's name.
    pub name: TableName,
    /// Columns in schema order, with field ids.
    pub columns: Vec<Column>,
    /// Primary-key column names in key order; empty for an append-only table.
    pub primary_key: Vec<String>,
    /// Bucket count; a row's bucket is [`crate::bucket::bucket_of`] of its encoded key.
    pub buckets: u32,
    /// The Iceberg partition spec, in field order.
    pub partition_by: Vec<PartitionField>,
    /// The changelog binding (derived from the name and the bucket count).
    pub changelog: ChangelogBinding,
    /// User properties (never the reserved `unitable.*` binding keys).
    pub properties: BTreeMap<String, String>,
}

/// What a user asks for when creating a table; [`TableDef::new`] validates it.
#[derive(Debug, Clone, Default)]
pub struct TableSpec {
    /// Columns (field ids are assigned 1..=n in this order).
    pub columns: Vec<Column>,
    /// Primary-key column names in key order.
    pub primary_key: Vec<String>,
    /// Bucket count, [`DEFAULT_BUCKETS`] when `None`.
    pub buckets: Option<u32>,
    /// Partition fields.
    pub partition_by: Vec<PartitionField>,
    /// Free properties.
    pub properties: BTreeMap<String, String>,
    /// The changelog record format (`json-v1` when not chosen).
    pub changelog_format: RecordFormat,
}

impl TableDef {
    /// Validates a spec and builds the definition, assigning field ids and the changelog binding.
    pub fn new(name: TableName, spec: TableSpec) -> Result<Self> {
        let fail = |reason: String| Err(Error::invalid_definition(&name, reason));
        if spec.columns.is_empty() {
            return fail("a table needs at least one column".into());
        }
        let mut columns = spec.columns;
        let mut seen = HashSet::new();
        for (i, column) in columns.iter_mut().enumerate() {
            validate_column_name(&name, &column.name)?;
            if !seen.insert(column.name.to_ascii_lowercase()) {
                return fail(format!("column `{}` is declared twice", column.name));
            }
            column.field_id = i32::try_from(i + 1).unwrap_or(i32::MAX);
            // A primary key implies NOT NULL, as in SQL, Flink and Paimon: `id:int64` listed
            // as a key is created as `id:int64!`.
            if spec.primary_key.contains(&column.name) {
                column.required = true;
            }
        }
        let by_name: HashMap<&str, &Column> =
            columns.iter().map(|c| (c.name.as_str(), c)).collect();

        let mut pk_seen = HashSet::new();
        for key in &spec.primary_key {
            let Some(column) = by_name.get(key.as_str()) else {
                return fail(format!("primary-key column `{key}` is not a column"));
            };
            if !pk_seen.insert(key.as_str()) {
                return fail(format!("primary-key column `{key}` is listed twice"));
            }
            if column.ty.is_floating() {
                return fail(format!(
                    "primary-key column `{key}` is {}; floating-point columns cannot be keys (equal values may not compare equal)",
                    column.ty
                ));
            }
        }

        let buckets = spec.buckets.unwrap_or(DEFAULT_BUCKETS);
        if buckets == 0 || buckets > MAX_BUCKETS {
            return fail(format!(
                "buckets must be between 1 and {MAX_BUCKETS}, got {buckets}"
            ));
        }

        let mut part_seen = HashSet::new();
        for field in &spec.partition_by {
            let Some(column) = by_name.get(field.column.as_str()) else {
                return fail(format!(
                    "partition field `{field}`: `{}` is not a column",
                    field.column
                ));
            };
            if !field.transform.accepts(column.ty) {
                return fail(format!(
                    "partition field `{field}`: cannot apply this transform to a {} column",
                    column.ty
                ));
            }
            if !part_seen.insert(field.iceberg_name()) {
                return fail(format!("partition field `{field}` is declared twice"));
            }
        }

        let mut properties = spec.properties;
        let cluster = properties.remove(props::CHANGELOG_CLUSTER);
        if let Some(c) = &cluster
            && !crate::changelog::valid_cluster_name(c)
        {
            return fail(format!(
                "property {}={c}: a cluster name is 1 to 32 of a-z, 0-9 and -",
                props::CHANGELOG_CLUSTER
            ));
        }
        for key in properties.keys() {
            if key.trim().is_empty() {
                return fail("property keys cannot be empty".into());
            }
            if props::RESERVED.contains(&key.as_str()) {
                return fail(format!(
                    "property `{key}` is managed by unitable and cannot be set"
                ));
            }
        }
        if let Err(reason) =
            crate::ingest::IngestConfig::from_properties(&properties, !spec.primary_key.is_empty())
        {
            return fail(reason);
        }

        Ok(TableDef {
            changelog: ChangelogBinding {
                topic: name.changelog_topic(),
                partitions: buckets,
                format: spec.changelog_format,
                cluster,
                generation: 0,
                history: Vec::new(),
                moving: None,
            },
            name,
            columns,
            primary_key: spec.primary_key,
            buckets,
            partition_by: spec.partition_by,
            properties,
        })
    }

    /// How the table's changelog topic is set up, from its `unitable.changelog.*` properties
    /// (see [`props`]): keyed tables compact by default, append-only ones delete by age.
    pub fn topic_settings(&self) -> Result<TopicSettings> {
        let mut settings = TopicSettings::default();
        let bad = |key: &str, value: &str, want: &str| {
            Error::invalid_definition(&self.name, format!("property {key}={value}: {want}"))
        };
        let positive = |key: &str| -> Result<Option<i64>> {
            match self.properties.get(key) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<i64>() {
                    Ok(n) if n >= 1 => Ok(Some(n)),
                    _ => Err(bad(key, v, "expected a positive integer")),
                },
            }
        };
        if let Some(n) = positive(props::CHANGELOG_REPLICATION_FACTOR)? {
            settings.replication_factor = Some(i32::try_from(n).map_err(|_| {
                bad(
                    props::CHANGELOG_REPLICATION_FACTOR,
                    &n.to_string(),
                    "too large",
                )
            })?);
        }
        if let Some(n) = positive(props::CHANGELOG_MIN_INSYNC_REPLICAS)? {
            settings
                .configs
                .insert("min.insync.replicas".into(), n.to_string());
        }
        if let Some(v) = self.properties.get(props::CHANGELOG_RETENTION_MS) {
            match v.trim().parse::<i64>() {
                Ok(n) if n >= 1 || n == -1 => {
                    settings
                        .configs
                        .insert("retention.ms".into(), n.to_string());
                }
                _ => {
                    return Err(bad(
                        props::CHANGELOG_RETENTION_MS,
                        v,
                        "expected milliseconds (-1: keep forever)",
                    ));
                }
            }
        }
        let policy = match self.properties.get(props::CHANGELOG_CLEANUP_POLICY) {
            Some(v) => {
                let v = v.trim().to_ascii_lowercase().replace(' ', "");
                if !["compact", "delete", "compact,delete", "delete,compact"].contains(&v.as_str())
                {
                    return Err(bad(
                        props::CHANGELOG_CLEANUP_POLICY,
                        &v,
                        "expected compact, delete or compact,delete",
                    ));
                }
                if v.contains("compact") && self.is_append_only() {
                    return Err(bad(
                        props::CHANGELOG_CLEANUP_POLICY,
                        &v,
                        "an append-only table has no keys to compact by",
                    ));
                }
                v
            }
            None if self.is_append_only() => "delete".into(),
            None => "compact".into(),
        };
        settings.configs.insert("cleanup.policy".into(), policy);
        Ok(settings)
    }

    /// Whether the table has no primary key (every write is an insert).
    pub fn is_append_only(&self) -> bool {
        self.primary_key.is_empty()
    }

    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The Iceberg schema: columns, with the primary key as identifier fields.
    pub fn iceberg_schema(&self, schema_id: i32) -> Result<Schema> {
        let pk_ids = self
            .primary_key
            .iter()
            .filter_map(|k| self.column(k).map(|c| c.field_id));
        Schema::builder()
            .with_schema_id(schema_id)
            .with_fields(self.columns.iter().map(|c| Arc::new(c.to_iceberg())))
            .with_identifier_field_ids(pk_ids)
            .build()
            .map_err(|e| Error::catalog(format!("build schema of {}", self.name), e))
    }

    /// The Iceberg table properties: the user's plus unitable's binding keys.
    pub fn iceberg_properties(&self) -> HashMap<String, String> {
        let mut out: HashMap<String, String> = self
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let own = [
            (
                props::LAYOUT_VERSION,
                props::CURRENT_LAYOUT_VERSION.to_string(),
            ),
            (props::PRIMARY_KEY, self.primary_key.join(",")),
            (props::BUCKETS, self.buckets.to_string()),
            (props::CHANGELOG_TOPIC, self.changelog.topic.to_string()),
            (
                props::CHANGELOG_PARTITIONS,
                self.changelog.partitions.to_string(),
            ),
            (
                props::CHANGELOG_FORMAT,
                self.changelog.format.as_str().to_string(),
            ),
        ];
        out.extend(own.into_iter().map(|(k, v)| (k.to_string(), v)));
        if let Some(cluster) = &self.changelog.cluster {
            out.insert(props::CHANGELOG_CLUSTER.to_string(), cluster.clone());
        }
        if self.changelog.generation > 0 {
            out.insert(
                props::CHANGELOG_GENERATION.to_string(),
                self.changelog.generation.to_string(),
            );
            out.insert(
                props::CHANGELOG_HISTORY.to_string(),
                routes::history_text(&self.changelog.history),
            );
        }
        out.insert("write.format.default".into(), "parquet".into());
        out.insert("write.delete.mode".into(), "merge-on-read".into());
        out.insert("write.update.mode".into(), "merge-on-read".into());
        out
    }

    /// The Iceberg table creation request (format v2).
    pub fn to_table_creation(&self, location: Option<String>) -> Result<TableCreation> {
        let schema = self.iceberg_schema(0)?;
        let mut spec = UnboundPartitionSpec::builder().with_spec_id(0);
        for field in &self.partition_by {
            let source_id = self.column(&field.column).map_or(0, |c| c.field_id);
            spec = spec
                .add_partition_field(
                    source_id,
                    field.iceberg_name(),
                    field.transform.to_iceberg(),
                )
                .map_err(|e| Error::catalog(format!("partition spec of {}", self.name), e))?;
        }
        Ok(TableCreation::builder()
            .name(self.name.table().to_string())
            .location_opt(location)
            .schema(schema)
            .partition_spec(spec.build())
            .properties(self.iceberg_properties())
            .build())
    }

    /// Reads a definition back from Iceberg table metadata.
    pub fn from_iceberg(name: TableName, metadata: &TableMetadata) -> Result<Self> {
        let bad = |reason: String| Error::NotAUnitableTable {
            table: name.clone(),
            reason,
        };
        let properties = metadata.properties();
        let prop = |key: &str| {
            properties
                .get(key)
                .ok_or_else(|| bad(format!("table property `{key}` is missing")))
        };
        let schema = metadata.current_schema();
        let columns = Column::all_of(schema).map_err(bad)?;
        let primary_key: Vec<String> = prop(props::PRIMARY_KEY)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let mut id_fields: Vec<i32> = schema.identifier_field_ids().collect();
        id_fields.sort_unstable();
        let mut pk_ids: Vec<i32> = primary_key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .find(|c| &c.name == k)
                    .map(|c| c.field_id)
                    .ok_or_else(|| bad(format!("primary-key column `{k}` is not in the schema")))
            })
            .collect::<Result<_>>()?;
        pk_ids.sort_unstable();
        if pk_ids != id_fields {
            return Err(bad(
                "the schema's identifier fields do not match `unitable.primary-key`".into(),
            ));
        }
        let parse_u32 = |key: &str| -> Result<u32> {
            prop(key)?
                .parse()
                .map_err(|_| bad(format!("table property `{key}` is not a number")))
        };
        let buckets = parse_u32(props::BUCKETS)?;
        let nonempty = |key: &str| {
            properties
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let generation = match nonempty(props::CHANGELOG_GENERATION) {
            None => 0,
            Some(g) => g.parse().map_err(|_| {
                bad(format!(
                    "table property `{}` is not a number",
                    props::CHANGELOG_GENERATION
                ))
            })?,
        };
        let history = routes::parse_history(
            properties
                .get(props::CHANGELOG_HISTORY)
                .map_or("", String::as_str),
        )
        .map_err(|e| {
            bad(format!(
                "table property `{}`: {e}",
                props::CHANGELOG_HISTORY
            ))
        })?;
        if history.len() != generation as usize {
            return Err(bad(format!(
                "table property `{}` lists {} generations; generation {generation} needs all \
                 earlier ones",
                props::CHANGELOG_HISTORY,
                history.len()
            )));
        }
        let changelog = ChangelogBinding {
            topic: TopicName::new(prop(props::CHANGELOG_TOPIC)?.clone()),
            partitions: parse_u32(props::CHANGELOG_PARTITIONS)?,
            format: RecordFormat::parse(prop(props::CHANGELOG_FORMAT)?)
                .ok_or_else(|| bad("unknown changelog format".into()))?,
            cluster: nonempty(props::CHANGELOG_CLUSTER),
            generation,
            history,
            moving: nonempty(props::CHANGELOG_MOVING),
        };
        routes::observe(
            &changelog.topic,
            changelog.route(&metadata.uuid().to_string(), metadata.last_updated_ms()),
        );
        let mut partition_by = Vec::new();
        for field in metadata.default_partition_spec().fields() {
            let column = schema
                .name_by_field_id(field.source_id)
                .ok_or_else(|| bad(format!("partition field `{}` has no source", field.name)))?;
            let transform = PartitionTransform::from_iceberg(field.transform).ok_or_else(|| {
                bad(format!(
                    "partition field `{}` uses an unsupported transform",
                    field.name
                ))
            })?;
            partition_by.push(PartitionField {
                column: column.to_string(),
                transform,
            });
        }
        let user_properties = properties
            .iter()
            .filter(|(k, _)| !props::RESERVED.contains(&k.as_str()) && !is_iceberg_default(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(TableDef {
            name,
            columns,
            primary_key,
            buckets,
            partition_by,
            changelog,
            properties: user_properties,
        })
    }
}

/// Iceberg write properties unitable sets on every table; not shown as user properties.
fn is_iceberg_default(key: &str) -> bool {
    matches!(
        key,
        "write.format.default" | "write.delete.mode" | "write.update.mode"
    )
}

/// Every schema in `metadata` (current and earlier) as Iceberg schema id and columns, for
/// [`crate::record::RecordCodec::with_history`]. Schemas with a type unitable does not support
/// are left out (their records fall back to the current schema).
pub fn schema_history(metadata: &TableMetadata) -> Vec<(i32, Vec<Column>)> {
    metadata
        .schemas_iter()
        .filter_map(|s| Column::all_of(s).ok().map(|c| (s.schema_id(), c)))
        .collect()
}

/// Checks a changed definition's columns: valid names, none twice (in any case).
fn check_columns(def: &TableDef) -> Result<()> {
    let mut seen = HashSet::new();
    for column in &def.columns {
        validate_column_name(&def.name, &column.name)?;
        if !seen.insert(column.name.to_ascii_lowercase()) {
            return Err(Error::invalid_definition(
                &def.name,
                format!("column `{}` is declared twice", column.name),
            ));
        }
    }
    Ok(())
}

fn validate_column_name(table: &TableName, name: &str) -> Result<()> {
    let fail = |reason: String| Err(Error::invalid_definition(table, reason));
    if name.is_empty() {
        return fail("a column name is empty".into());
    }
    if name.len() > MAX_COLUMN_NAME_LEN {
        return fail(format!(
            "column name `{name}` is longer than {MAX_COLUMN_NAME_LEN} characters"
        ));
    }
    if name.starts_with('_') {
        return fail(format!(
            "column name `{name}`: names starting with `_` are reserved for unitable's metadata columns"
        ));
    }
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return fail(format!(
            "column name `{name}` must start with a letter and contain only letters, digits and `_`"
        ));
    }
    Ok(())
}

/// A table as it currently is in the catalog: its definition plus Iceberg state.
#[derive(Debug, Clone)]
pub struct TableState {
    /// The definition.
    pub def: TableDef,
    /// The Iceberg table UUID.
    pub uuid: String,
    /// The table location in the warehouse.
    pub location: String,
    /// The current schema id.
    pub schema_id: i32,
    /// The current snapshot, if any.
    pub current_snapshot_id: Option<i64>,
    /// The current metadata file.
    pub metadata_location: Option<String>,
}

impl TableState {
    /// Builds the state from a loaded Iceberg table.
    pub fn from_table(name: TableName, table: &iceberg::table::Table) -> Result<Self> {
        let metadata = table.metadata();
        Ok(TableState {
            def: TableDef::from_iceberg(name, metadata)?,
            uuid: metadata.uuid().to_string(),
            location: metadata.location().to_string(),
            schema_id: metadata.current_schema_id(),
            current_snapshot_id: metadata.current_snapshot_id(),
            metadata_location: table.metadata_location().map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests;
