//! Tokens, grants and group membership in the catalog database, beside Iceberg's own tables, so
//! every `unitable serve` on the same catalog enforces one policy. SQLite and Postgres alike.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use unitable_core::catalog::{SqlDialect, sql_url};

use super::policy::{Policy, TokenRecord};
use super::token::StoredSecret;
use super::{Grant, Grantee, Object, Privilege};
use crate::status::ApiError;

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS unitable_tokens (
        id VARCHAR(32) NOT NULL PRIMARY KEY,
        user_name VARCHAR(255) NOT NULL,
        description VARCHAR(1024) NOT NULL,
        salt VARCHAR(64) NOT NULL,
        hash VARCHAR(128) NOT NULL,
        created_ms BIGINT NOT NULL,
        revoked_ms BIGINT
    )",
    "CREATE TABLE IF NOT EXISTS unitable_grants (
        privilege VARCHAR(16) NOT NULL,
        object_kind VARCHAR(16) NOT NULL,
        object_name VARCHAR(255) NOT NULL,
        grantee_kind VARCHAR(16) NOT NULL,
        grantee VARCHAR(255) NOT NULL,
        PRIMARY KEY (privilege, object_kind, object_name, grantee_kind, grantee)
    )",
    "CREATE TABLE IF NOT EXISTS unitable_group_members (
        group_name VARCHAR(255) NOT NULL,
        user_name VARCHAR(255) NOT NULL,
        PRIMARY KEY (group_name, user_name)
    )",
];

/// The access tables of one SQL database.
#[derive(Debug, Clone)]
pub(crate) struct AccessStore {
    pool: AnyPool,
    dialect: SqlDialect,
}

fn db_error(operation: &'static str) -> impl Fn(sqlx::Error) -> ApiError {
    move |e| ApiError::AccessStore {
        operation,
        reason: e.to_string(),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl AccessStore {
    /// Connects to the database of the SQL catalog `catalog_uri` and creates the access tables
    /// if they are missing.
    pub(crate) async fn connect(catalog_uri: &str) -> Result<Self, ApiError> {
        let (url, dialect) = sql_url(catalog_uri)
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::AccessStore {
                operation: "connect",
                reason: format!(
                    "catalog `{catalog_uri}` is a REST catalog; give --access-db \
                     sqlite://PATH or postgres://... for tokens and grants"
                ),
            })?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .map_err(db_error("connect"))?;
        let store = Self { pool, dialect };
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&store.pool)
                .await
                .map_err(db_error("create the access tables"))?;
        }
        Ok(store)
    }

    /// `$n` placeholders as the dialect wants them.
    fn sql(&self, text: &str) -> String {
        self.dialect.placeholders(text)
    }

    /// Reads the whole policy.
    pub(crate) async fn load(&self) -> Result<Policy, ApiError> {
        let mut policy = Policy::default();
        let rows = sqlx::query(
            "SELECT id, user_name, description, salt, hash, created_ms, revoked_ms \
             FROM unitable_tokens",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("read tokens"))?;
        for row in rows {
            let id: String = row.try_get(0).map_err(db_error("read tokens"))?;
            let record = TokenRecord {
                secret: StoredSecret {
                    id: id.clone(),
                    salt: row.try_get(3).map_err(db_error("read tokens"))?,
                    hash: row.try_get(4).map_err(db_error("read tokens"))?,
                },
                user: row.try_get(1).map_err(db_error("read tokens"))?,
                description: row.try_get(2).map_err(db_error("read tokens"))?,
                created_ms: row.try_get(5).map_err(db_error("read tokens"))?,
                revoked_ms: row.try_get(6).map_err(db_error("read tokens"))?,
                from_file: false,
            };
            policy.tokens.insert(id, record);
        }
        let rows = sqlx::query(
            "SELECT privilege, object_kind, object_name, grantee_kind, grantee FROM unitable_grants",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("read grants"))?;
        for row in rows {
            let get = |i: usize| -> Result<String, ApiError> {
                row.try_get::<String, _>(i).map_err(db_error("read grants"))
            };
            let (privilege, kind, object, grantee_kind, grantee) =
                (get(0)?, get(1)?, get(2)?, get(3)?, get(4)?);
            // Rows this version cannot read (written by a newer one) grant nothing.
            let Some(privilege) = Privilege::parse(&privilege) else {
                continue;
            };
            let object = match kind.as_str() {
                "table" => Object::Table(object),
                "namespace" => Object::Namespace(object),
                "all" => Object::All,
                _ => continue,
            };
            let grantee = match grantee_kind.as_str() {
                "user" => Grantee::User(grantee),
                "group" => Grantee::Group(grantee),
                _ => continue,
            };
            policy.grants.push(Grant {
                privilege,
                object,
                grantee,
            });
        }
        policy.grants.sort();
        let rows = sqlx::query("SELECT group_name, user_name FROM unitable_group_members")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("read group members"))?;
        for row in rows {
            let group: String = row.try_get(0).map_err(db_error("read group members"))?;
            let user: String = row.try_get(1).map_err(db_error("read group members"))?;
            policy.members.entry(user).or_default().insert(group);
        }
        Ok(policy)
    }

    /// Stores a token (a no-op if its id is already stored).
    pub(crate) async fn insert_token(
        &self,
        secret: &StoredSecret,
        user: &str,
        description: &str,
    ) -> Result<(), ApiError> {
        sqlx::query(&self.sql(
            "INSERT INTO unitable_tokens (id, user_name, description, salt, hash, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        ))
        .bind(secret.id.clone())
        .bind(user.to_string())
        .bind(description.to_string())
        .bind(secret.salt.clone())
        .bind(secret.hash.clone())
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(db_error("store a token"))?;
        Ok(())
    }

    /// Marks a token revoked; false if there is no live token with that id.
    pub(crate) async fn revoke_token(&self, id: &str) -> Result<bool, ApiError> {
        let done = sqlx::query(&self.sql(
            "UPDATE unitable_tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL",
        ))
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_error("revoke a token"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Stores a grant (granting twice is one grant).
    pub(crate) async fn grant(&self, grant: &Grant) -> Result<(), ApiError> {
        bind_grant(
            sqlx::query(&self.sql(
                "INSERT INTO unitable_grants (privilege, object_kind, object_name, grantee_kind, \
                 grantee) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )),
            grant,
        )
        .execute(&self.pool)
        .await
        .map_err(db_error("store a grant"))?;
        Ok(())
    }

    /// Deletes a grant; false if there was none.
    pub(crate) async fn revoke(&self, grant: &Grant) -> Result<bool, ApiError> {
        let sql = self.sql(
            "DELETE FROM unitable_grants WHERE privilege = $1 AND object_kind = $2 \
             AND object_name = $3 AND grantee_kind = $4 AND grantee = $5",
        );
        let done = bind_grant(sqlx::query(&sql), grant)
            .execute(&self.pool)
            .await
            .map_err(db_error("delete a grant"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Adds `user` to `group` (a no-op if it is a member).
    pub(crate) async fn add_member(&self, group: &str, user: &str) -> Result<(), ApiError> {
        sqlx::query(&self.sql(
            "INSERT INTO unitable_group_members (group_name, user_name) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        ))
        .bind(group.to_string())
        .bind(user.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_error("add a group member"))?;
        Ok(())
    }

    /// Removes `user` from `group`; false if it was not a member.
    pub(crate) async fn remove_member(&self, group: &str, user: &str) -> Result<bool, ApiError> {
        let done = sqlx::query(
            &self
                .sql("DELETE FROM unitable_group_members WHERE group_name = $1 AND user_name = $2"),
        )
        .bind(group.to_string())
        .bind(user.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_error("remove a group member"))?;
        Ok(done.rows_affected() > 0)
    }
}

/// Binds `grant` to `$1..$5` in column order: privilege, object kind, object name, grantee
/// kind, grantee.
fn bind_grant<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    grant: &Grant,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(grant.privilege.as_str())
        .bind(grant.object.kind())
        .bind(grant.object.name().to_string())
        .bind(grant.grantee.kind())
        .bind(grant.grantee.name().to_string())
}
