//! `AccessService`: tokens, group membership and grants. Changes are written to the catalog
//! database and this server's policy is reloaded at once; other servers on the same database
//! pick them up within their reload interval.

use tonic::{Request, Response, Status};
use unitable_proto::v1 as wire;
use unitable_proto::v1::access_service_server::AccessService;

use crate::access::audit::Outcome;
use crate::access::{Access, AuthMethod, Grant, Grantee, Object, Principal, Privilege, token};
use crate::status::ApiError;

/// Access administration.
#[derive(Debug, Clone)]
pub(crate) struct AccessApi {
    access: Access,
}

impl AccessApi {
    pub(crate) fn new(access: Access) -> Self {
        Self { access }
    }

    /// Reloads after a change; a failed reload leaves the change for the periodic one.
    async fn changed(&self) {
        if let Err(e) = self.access.reload().await {
            tracing::warn!("the access policy changed but could not be reloaded now: {e}");
        }
    }

    fn audit_ok(&self, who: &Principal, action: &str, detail: &str) {
        self.access
            .audit()
            .record(who.name(), action, None, Outcome::Ok, Some(detail));
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        field,
        reason: reason.into(),
    }
}

fn name_field(field: &'static str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(bad(field, "is empty"));
    }
    if value.len() > 255 || value.chars().any(char::is_control) {
        return Err(bad(field, "must be at most 255 printable characters"));
    }
    Ok(value.to_string())
}

pub(crate) fn privilege_from_wire(value: i32) -> Result<Privilege, ApiError> {
    match wire::Privilege::try_from(value) {
        Ok(wire::Privilege::Read) => Ok(Privilege::Read),
        Ok(wire::Privilege::Write) => Ok(Privilege::Write),
        Ok(wire::Privilege::Admin) => Ok(Privilege::Admin),
        Ok(wire::Privilege::Unspecified) | Err(_) => Err(bad(
            "grant.privilege",
            "must be PRIVILEGE_READ, PRIVILEGE_WRITE or PRIVILEGE_ADMIN",
        )),
    }
}

fn grant_from_wire(spec: Option<&wire::GrantSpec>) -> Result<Grant, ApiError> {
    let spec = spec.ok_or_else(|| bad("grant", "is missing"))?;
    let privilege = privilege_from_wire(spec.privilege)?;
    let object = match wire::ObjectKind::try_from(spec.object_kind) {
        Ok(wire::ObjectKind::Table) => {
            let name: unitable_core::naming::TableName = spec.object.parse()?;
            Object::Table(name.to_string())
        }
        Ok(wire::ObjectKind::Namespace) => {
            let ns = name_field("grant.object", &spec.object)?;
            // A namespace is a table name's first part.
            format!("{ns}.t").parse::<unitable_core::naming::TableName>()?;
            Object::Namespace(ns)
        }
        Ok(wire::ObjectKind::All) => Object::All,
        Ok(wire::ObjectKind::Unspecified) | Err(_) => {
            return Err(bad(
                "grant.object_kind",
                "must be OBJECT_KIND_TABLE, OBJECT_KIND_NAMESPACE or OBJECT_KIND_ALL",
            ));
        }
    };
    let grantee = match wire::GranteeKind::try_from(spec.grantee_kind) {
        Ok(wire::GranteeKind::User) => Grantee::User(name_field("grant.grantee", &spec.grantee)?),
        Ok(wire::GranteeKind::Group) => Grantee::Group(name_field("grant.grantee", &spec.grantee)?),
        Ok(wire::GranteeKind::Unspecified) | Err(_) => {
            return Err(bad(
                "grant.grantee_kind",
                "must be GRANTEE_KIND_USER or GRANTEE_KIND_GROUP",
            ));
        }
    };
    Ok(Grant {
        privilege,
        object,
        grantee,
    })
}

fn grant_to_wire(grant: &Grant) -> wire::GrantSpec {
    wire::GrantSpec {
        privilege: match grant.privilege {
            Privilege::Read => wire::Privilege::Read,
            Privilege::Write => wire::Privilege::Write,
            Privilege::Admin => wire::Privilege::Admin,
        } as i32,
        object_kind: match grant.object {
            Object::Table(_) => wire::ObjectKind::Table,
            Object::Namespace(_) => wire::ObjectKind::Namespace,
            Object::All => wire::ObjectKind::All,
        } as i32,
        object: grant.object.name().to_string(),
        grantee_kind: match grant.grantee {
            Grantee::User(_) => wire::GranteeKind::User,
            Grantee::Group(_) => wire::GranteeKind::Group,
        } as i32,
        grantee: grant.grantee.name().to_string(),
    }
}

/// The grants `who` may see: everyone sees the grants that apply to them; an admin of a table
/// or namespace also sees every grant on it (what they can revoke); `admin ON ALL` sees
/// everything.
pub(crate) fn visible_grants(access: &Access, who: &Principal) -> Vec<Grant> {
    let policy = access.policy();
    policy
        .grants
        .iter()
        .filter(|g| match who {
            Principal::Anonymous => true,
            Principal::User { name, .. } => {
                policy.applies_to(g, name) || policy.administers(name, &g.object)
            }
        })
        .cloned()
        .collect()
}

/// `read ON TABLE shop.orders TO USER ann`.
pub(crate) fn describe(grant: &Grant) -> String {
    let object = match &grant.object {
        Object::All => "ALL".to_string(),
        other => format!("{} {}", other.kind().to_uppercase(), other.name()),
    };
    format!(
        "{} ON {object} TO {} {}",
        grant.privilege,
        grant.grantee.kind().to_uppercase(),
        grant.grantee.name()
    )
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    async fn create_token(
        &self,
        request: Request<wire::CreateTokenRequest>,
    ) -> Result<Response<wire::CreateTokenResponse>, Status> {
        let who = Principal::of(&request)?;
        self.access.check_global_admin(&who, "CreateToken")?;
        let request = request.into_inner();
        let user = name_field("user", &request.user)?;
        let new = token::generate().map_err(|reason| ApiError::AccessStore {
            operation: "generate a token",
            reason,
        })?;
        self.access
            .store()
            .insert_token(&new.stored, &user, &request.description)
            .await?;
        self.changed().await;
        self.audit_ok(
            &who,
            "CreateToken",
            &format!("token {} for user {user}", new.stored.id),
        );
        Ok(Response::new(wire::CreateTokenResponse {
            token: new.token,
            token_id: new.stored.id,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<wire::RevokeTokenRequest>,
    ) -> Result<Response<wire::RevokeTokenResponse>, Status> {
        let who = Principal::of(&request)?;
        self.access.check_global_admin(&who, "RevokeToken")?;
        let id = request.into_inner().token_id;
        // A whole token given by mistake is reduced to its id, so it never reaches a log.
        let id = token::parse(&id).map_or(id.trim().to_string(), |p| p.id.to_string());
        if self
            .access
            .policy()
            .tokens
            .get(&id)
            .is_some_and(|t| t.from_file)
        {
            return Err(ApiError::BadRequest {
                field: "token_id",
                reason: format!(
                    "token `{id}` comes from the server's --token-file: delete its line there \
                     (servers re-read the file within their reload interval, or at once on \
                     SIGHUP)"
                ),
            }
            .into());
        }
        if !self.access.store().revoke_token(&id).await? {
            return Err(ApiError::AccessNotFound {
                what: format!("a live token with id `{id}` (see `unitable token list`)"),
            }
            .into());
        }
        self.changed().await;
        self.audit_ok(&who, "RevokeToken", &format!("token {id}"));
        Ok(Response::new(wire::RevokeTokenResponse {}))
    }

    async fn list_tokens(
        &self,
        request: Request<wire::ListTokensRequest>,
    ) -> Result<Response<wire::ListTokensResponse>, Status> {
        let who = Principal::of(&request)?;
        self.access.check_global_admin(&who, "ListTokens")?;
        let policy = self.access.policy();
        let mut tokens: Vec<_> = policy
            .tokens
            .values()
            .map(|t| wire::TokenInfo {
                token_id: t.secret.id.clone(),
                user: t.user.clone(),
                description: t.description.clone(),
                created_ms: t.created_ms,
                revoked_ms: t.revoked_ms.unwrap_or(0),
            })
            .collect();
        tokens.sort_by(|a, b| (a.created_ms, &a.token_id).cmp(&(b.created_ms, &b.token_id)));
        Ok(Response::new(wire::ListTokensResponse { tokens }))
    }

    async fn grant(
        &self,
        request: Request<wire::GrantRequest>,
    ) -> Result<Response<wire::GrantResponse>, Status> {
        let who = Principal::of(&request)?;
        let grant = grant_from_wire(request.get_ref().grant.as_ref())?;
        self.access
            .check_object_admin(&who, &grant.object, "Grant")?;
        self.access.store().grant(&grant).await?;
        self.changed().await;
        self.audit_ok(&who, "Grant", &describe(&grant));
        Ok(Response::new(wire::GrantResponse {}))
    }

    async fn revoke(
        &self,
        request: Request<wire::RevokeRequest>,
    ) -> Result<Response<wire::RevokeResponse>, Status> {
        let who = Principal::of(&request)?;
        let grant = grant_from_wire(request.get_ref().grant.as_ref())?;
        self.access
            .check_object_admin(&who, &grant.object, "Revoke")?;
        if !self.access.store().revoke(&grant).await? {
            return Err(ApiError::AccessNotFound {
                what: format!("the grant `{}` (see `unitable grants`)", describe(&grant)),
            }
            .into());
        }
        self.changed().await;
        self.audit_ok(&who, "Revoke", &describe(&grant));
        Ok(Response::new(wire::RevokeResponse {}))
    }

    async fn list_grants(
        &self,
        request: Request<wire::ListGrantsRequest>,
    ) -> Result<Response<wire::ListGrantsResponse>, Status> {
        let who = Principal::of(&request)?;
        let name = request.into_inner().name;
        let name = name.trim();
        let grants = visible_grants(&self.access, &who)
            .iter()
            .filter(|g| name.is_empty() || g.grantee.name() == name || g.object.name() == name)
            .map(grant_to_wire)
            .collect();
        Ok(Response::new(wire::ListGrantsResponse { grants }))
    }

    async fn add_group_member(
        &self,
        request: Request<wire::GroupMemberRequest>,
    ) -> Result<Response<wire::GroupMemberResponse>, Status> {
        let who = Principal::of(&request)?;
        self.access.check_global_admin(&who, "AddGroupMember")?;
        let request = request.into_inner();
        let group = name_field("group", &request.group)?;
        let user = name_field("user", &request.user)?;
        self.access.store().add_member(&group, &user).await?;
        self.changed().await;
        self.audit_ok(
            &who,
            "AddGroupMember",
            &format!("user {user} to group {group}"),
        );
        Ok(Response::new(wire::GroupMemberResponse {}))
    }

    async fn remove_group_member(
        &self,
        request: Request<wire::GroupMemberRequest>,
    ) -> Result<Response<wire::GroupMemberResponse>, Status> {
        let who = Principal::of(&request)?;
        self.access.check_global_admin(&who, "RemoveGroupMember")?;
        let request = request.into_inner();
        let group = name_field("group", &request.group)?;
        let user = name_field("user", &request.user)?;
        if !self.access.store().remove_member(&group, &user).await? {
            return Err(ApiError::AccessNotFound {
                what: format!("user `{user}` in group `{group}`"),
            }
            .into());
        }
        self.changed().await;
        self.audit_ok(
            &who,
            "RemoveGroupMember",
            &format!("user {user} from group {group}"),
        );
        Ok(Response::new(wire::GroupMemberResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<wire::WhoAmIRequest>,
    ) -> Result<Response<wire::WhoAmIResponse>, Status> {
        let who = Principal::of(&request)?;
        let policy = self.access.policy();
        let (groups, by) = match &who {
            Principal::Anonymous => (Vec::new(), "anonymous"),
            Principal::User { name, via, .. } => (
                policy.groups_of(name).map(str::to_string).collect(),
                match via {
                    AuthMethod::Token => "token",
                    AuthMethod::Certificate => "certificate",
                },
            ),
        };
        Ok(Response::new(wire::WhoAmIResponse {
            user: who.name().to_string(),
            groups,
            authenticated_by: by.to_string(),
        }))
    }
}
