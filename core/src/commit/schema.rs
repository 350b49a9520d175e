//! Metadata-only schema commits: a new current schema with the same field ids (renames, drops,
//! widened types, optional columns, moved columns), which iceberg-rust 0.10.1's transactions
//! cannot express (they only add and delete columns).

use async_trait::async_trait;
use iceberg::spec::{Schema, TableMetadata, TableMetadataBuilder};

use super::committer::{Attempt, Base, Committer, Staged};
use super::{CommitError, CommitResult};
use crate::naming::TableName;

impl Committer {
    /// Makes `schema` the table's current schema, if the current schema is still
    /// `base_schema_id` (else [`CommitError::Invalid`]: someone else changed the schema; look
    /// again). Returns the new current schema id. A retry of a commit that landed finds it.
    pub async fn commit_schema(
        &self,
        table: &TableName,
        base_schema_id: i32,
        schema: Schema,
    ) -> CommitResult<i32> {
        let mut op = SchemaCommit {
            table: table.clone(),
            base_schema_id,
            schema,
        };
        self.run(table, &mut op).await
    }
}

struct SchemaCommit {
    table: TableName,
    base_schema_id: i32,
    schema: Schema,
}

impl SchemaCommit {
    /// Whether `current` has exactly the staged fields and key (schema ids aside).
    fn same_as(&self, current: &Schema) -> bool {
        current.as_struct() == self.schema.as_struct()
            && current.identifier_field_ids().collect::<Vec<_>>()
                == self.schema.identifier_field_ids().collect::<Vec<_>>()
    }
}

#[async_trait]
impl Attempt for SchemaCommit {
    type Output = i32;

    fn landed(&self, metadata: &TableMetadata) -> Option<i32> {
        let current = metadata.current_schema();
        (metadata.current_schema_id() != self.base_schema_id && self.same_as(current))
            .then(|| metadata.current_schema_id())
    }

    async fn stage(&mut self, base: &Base<'_>) -> CommitResult<Staged<i32>> {
        let found = base.metadata.current_schema_id();
        if found != self.base_schema_id {
            return Err(CommitError::Invalid {
                reason: format!(
                    "the schema of `{}` changed while this change was prepared (schema {} is now current, not {}); describe the table and try again",
                    self.table, found, self.base_schema_id
                ),
            });
        }
        let built = TableMetadataBuilder::new_from_metadata(
            base.metadata.clone(),
            Some(base.location.to_string()),
        )
        .add_current_schema(self.schema.clone())
        .and_then(|b| b.build())
        .map_err(|e| CommitError::iceberg("change the schema", e))?;
        let id = built.metadata.current_schema_id();
        Ok(Staged::Commit {
            metadata: Box::new(built.metadata),
            output: id,
        })
    }
}
