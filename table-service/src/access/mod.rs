//! Access control: who is calling (authentication) and what they may do (authorization).
//!
//! - [`token`]: bearer tokens, their format and their salted hashes.
//! - [`store`]: tokens, grants and group membership in the catalog database
//!   (`unitable_tokens`, `unitable_grants`, `unitable_group_members`).
//! - [`policy`]: an immutable snapshot of the store and the grant evaluation.
//! - [`auth`]: the tonic interceptor that turns credentials into a [`Principal`].
//! - [`audit`]: one JSON line per write, admin action, grant change and denial.
//!
//! [`Access`] is what the gRPC services hold: each method names the privilege and the table(s)
//! it needs and calls [`Access::check`] before touching a table. The policy is re-read from the
//! database every few seconds, on SIGHUP, and at once after a change made through this process,
//! so revocations take effect without a restart (docs/security.md).

pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod policy;
pub(crate) mod store;
pub(crate) mod token;
pub(crate) mod token_file;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tonic::Request;
use unitable_core::naming::TableName;

use self::audit::{Audit, Outcome};
use self::policy::Policy;
use self::store::AccessStore;
use crate::status::ApiError;

/// A privilege. Each one includes the ones before it: `admin` ⊇ `write` ⊇ `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Privilege {
    Read,
    Write,
    Admin,
}

impl Privilege {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Privilege::Read => "read",
            Privilege::Write => "write",
            Privilege::Admin => "admin",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "read" => Some(Privilege::Read),
            "write" => Some(Privilege::Write),
            "admin" => Some(Privilege::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a grant is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Object {
    Table(String),
    Namespace(String),
    All,
}

impl Object {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Object::Table(_) => "table",
            Object::Namespace(_) => "namespace",
            Object::All => "all",
        }
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Object::Table(n) | Object::Namespace(n) => n,
            Object::All => "",
        }
    }

    pub(crate) fn covers(&self, table: &TableName) -> bool {
        match self {
            Object::All => true,
            Object::Namespace(ns) => table.namespace() == ns,
            Object::Table(t) => *t == table.to_string(),
        }
    }
}

/// Who a grant is to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Grantee {
    User(String),
    Group(String),
}

impl Grantee {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Grantee::User(_) => "user",
            Grantee::Group(_) => "group",
        }
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Grantee::User(n) | Grantee::Group(n) => n,
        }
    }
}

/// One grant: `privilege` ON `object` TO `grantee`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Grant {
    pub(crate) privilege: Privilege,
    pub(crate) object: Object,
    pub(crate) grantee: Grantee,
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMethod {
    Token,
    Certificate,
}

/// The caller of an RPC, put into the request's extensions by [`auth::Authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    /// No credentials, on a server started with `--allow-anonymous`: full access.
    Anonymous,
    User {
        name: String,
        via: AuthMethod,
        /// The id of the token the call authenticated with, so a long call can notice that it
        /// was revoked.
        token_id: Option<String>,
    },
}

impl Principal {
    pub(crate) fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::User { name, .. } => name,
        }
    }

    /// The principal of `request`; UNAUTHENTICATED if the interceptor did not run.
    pub(crate) fn of<T>(request: &Request<T>) -> Result<Principal, ApiError> {
        request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or(ApiError::Unauthenticated {
                reason: "the request carried no identity".into(),
            })
    }
}

/// The access-control layer the gRPC services consult.
#[derive(Clone)]
pub(crate) struct Access {
    inner: Arc<Inner>,
}

struct Inner {
    policy: RwLock<Arc<Policy>>,
    store: AccessStore,
    /// `--token-file`, read with every load of the policy.
    token_file: Option<PathBuf>,
    allow_anonymous: bool,
    audit: Audit,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("allow_anonymous", &self.inner.allow_anonymous)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// Access backed by `store` (and the tokens of `token_file`), with its policy loaded now.
    pub(crate) async fn open(
        store: AccessStore,
        token_file: Option<PathBuf>,
        allow_anonymous: bool,
        audit: Audit,
    ) -> Result<Self, ApiError> {
        let policy = load(&store, token_file.as_deref()).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                policy: RwLock::new(Arc::new(policy)),
                store,
                token_file,
                allow_anonymous,
                audit,
            }),
        })
    }

    /// The current policy snapshot.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        match self.inner.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the policy from the database; on failure the previous policy stays.
    pub(crate) async fn reload(&self) -> Result<(), ApiError> {
        let policy = Arc::new(load(&self.inner.store, self.inner.token_file.as_deref()).await?);
        match self.inner.policy.write() {
            Ok(mut p) => *p = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
        Ok(())
    }

    pub(crate) fn store(&self) -> &AccessStore {
        &self.inner.store
    }

    pub(crate) fn allow_anonymous(&self) -> bool {
        self.inner.allow_anonymous
    }

    pub(crate) fn audit(&self) -> &Audit {
        &self.inner.audit
    }

    /// Whether `who` holds `privilege` on `table`.
    pub(crate) fn allows(&self, who: &Principal, privilege: Privilege, table: &TableName) -> bool {
        match who {
            Principal::Anonymous => true,
            Principal::User { name, .. } => self.policy().allows(name, privilege, table),
        }
    }

    /// Fails with PERMISSION_DENIED (and an audit line) unless `who` holds `privilege` on
    /// `table`. The answer is the same whether or not the table exists.
    pub(crate) fn check(
        &self,
        who: &Principal,
        privilege: Privilege,
        table: &TableName,
        action: &'static str,
    ) -> Result<(), ApiError> {
        if self.allows(who, privilege, table) {
            return Ok(());
        }
        let table = table.to_string();
        self.audit()
            .record(who.name(), action, Some(&table), Outcome::Denied, None);
        Err(ApiError::PermissionDenied {
            principal: who.name().to_string(),
            privilege,
            object: format!("table {table}"),
            grant_hint: format!("{privilege} ON TABLE {table} TO USER {}", who.name()),
        })
    }

    /// Fails unless `who` can still do what a long call (a stream) started with: its token is
    /// still live (else UNAUTHENTICATED) and it still holds `privilege` on every table in
    /// `tables` (else PERMISSION_DENIED). Both are audited as denials.
    pub(crate) fn recheck(
        &self,
        who: &Principal,
        privilege: Privilege,
        tables: &[TableName],
        action: &'static str,
    ) -> Result<(), ApiError> {
        if let Principal::User {
            token_id: Some(id), ..
        } = who
            && !self.policy().token_live(id)
        {
            let table = tables.first().map(ToString::to_string);
            let reason = format!(
                "the token `{id}` this call started with was revoked; ask an admin for a new one"
            );
            self.audit().record(
                who.name(),
                action,
                table.as_deref(),
                Outcome::Unauthenticated,
                Some(&reason),
            );
            return Err(ApiError::Unauthenticated { reason });
        }
        for table in tables {
            self.check(who, privilege, table, action)?;
        }
        Ok(())
    }

    /// A [`Guard`] for a long call by `who` that needs `privilege` on `tables`.
    pub(crate) fn guard(
        &self,
        who: &Principal,
        privilege: Privilege,
        tables: Vec<TableName>,
        action: &'static str,
    ) -> Guard {
        Guard {
            access: self.clone(),
            who: who.clone(),
            privilege,
            tables,
            action,
        }
    }

    /// Fails with PERMISSION_DENIED unless `who` may grant and revoke privileges on `object`:
    /// `admin` on a table (directly, through its namespace or ALL) for a table, `admin` on the
    /// namespace or ALL for a namespace, `admin ON ALL` for ALL.
    pub(crate) fn check_object_admin(
        &self,
        who: &Principal,
        object: &Object,
        action: &'static str,
    ) -> Result<(), ApiError> {
        let allowed = match who {
            Principal::Anonymous => true,
            Principal::User { name, .. } => self.policy().administers(name, object),
        };
        if allowed {
            return Ok(());
        }
        let (object_text, on) = match object {
            Object::All => ("everything (ALL)".to_string(), "ALL".to_string()),
            Object::Namespace(ns) => (format!("namespace {ns}"), format!("NAMESPACE {ns}")),
            Object::Table(t) => (format!("table {t}"), format!("TABLE {t}")),
        };
        let table = matches!(object, Object::Table(_)).then(|| object.name().to_string());
        self.audit()
            .record(who.name(), action, table.as_deref(), Outcome::Denied, None);
        Err(ApiError::PermissionDenied {
            principal: who.name().to_string(),
            privilege: Privilege::Admin,
            object: object_text,
            grant_hint: format!("admin ON {on} TO USER {}", who.name()),
        })
    }

    /// Fails with PERMISSION_DENIED unless `who` holds `admin` on everything (needed to manage
    /// tokens and groups).
    pub(crate) fn check_global_admin(
        &self,
        who: &Principal,
        action: &'static str,
    ) -> Result<(), ApiError> {
        self.check_object_admin(who, &Object::All, action)
    }
}

/// The policy in the database plus the tokens of the token file, if any. A token id in both is
/// an error (one of them would silently shadow the other).
async fn load(
    store: &AccessStore,
    token_file: Option<&std::path::Path>,
) -> Result<Policy, ApiError> {
    let mut policy = store.load().await?;
    let Some(path) = token_file else {
        return Ok(policy);
    };
    let tokens = token_file::read(path).map_err(|reason| ApiError::AccessStore {
        operation: "read the token file",
        reason,
    })?;
    for record in tokens {
        if policy.tokens.contains_key(&record.secret.id) {
            return Err(ApiError::AccessStore {
                operation: "read the token file",
                reason: format!(
                    "token id {} of {} is also in the catalog database; remove one of them",
                    record.secret.id,
                    path.display()
                ),
            });
        }
        policy.tokens.insert(record.secret.id.clone(), record);
    }
    Ok(policy)
}

/// What a long call (a read stream, a write stream, a SQL result) re-checks while it runs, so a
/// revoked grant or token ends it instead of letting it run on.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    access: Access,
    who: Principal,
    privilege: Privilege,
    tables: Vec<TableName>,
    action: &'static str,
}

impl Guard {
    /// Ok while the caller still holds what the call needs.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        self.access
            .recheck(&self.who, self.privilege, &self.tables, self.action)
    }
}
