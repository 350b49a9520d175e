//! `unitable grant|revoke|grants|token|group|whoami`: access administration.

use std::process::ExitCode;

use serde_json::json;
use unitable_proto::v1 as wire;
use unitable_proto::v1::access_service_client::AccessServiceClient;

use super::{ClientError, Connection};
use crate::cli::{GroupCommand, OutputFormat, TokenCommand};

/// What to do.
#[derive(Debug)]
pub(crate) enum AccessCommand {
    Grant(Vec<String>),
    Revoke(Vec<String>),
    Grants {
        name: Option<String>,
        format: OutputFormat,
    },
    Token(TokenCommand),
    Group(GroupCommand),
    WhoAmI,
}

/// Runs one access command.
pub(crate) async fn run(conn: &Connection, cmd: AccessCommand) -> ExitCode {
    match run_inner(conn, cmd).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

const GRANT_SYNTAX: &str = "write it as PRIVILEGE ON TABLE NS.T|NAMESPACE NS|ALL TO USER|GROUP \
                            NAME, e.g. `read ON TABLE shop.orders TO GROUP analysts`";

/// Parses `read ON TABLE shop.orders TO USER ann` (keywords in any case).
pub(crate) fn parse_grant(words: &[String]) -> Result<wire::GrantSpec, ClientError> {
    let err = |what: &str| ClientError::new(format!("{what}; {GRANT_SYNTAX}"));
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let upper = |i: usize| w.get(i).map(|s| s.to_ascii_uppercase());
    let privilege = match upper(0).as_deref() {
        Some("READ") => wire::Privilege::Read,
        Some("WRITE") => wire::Privilege::Write,
        Some("ADMIN") => wire::Privilege::Admin,
        _ => return Err(err("the privilege must be read, write or admin")),
    };
    if upper(1).as_deref() != Some("ON") {
        return Err(err("expected ON after the privilege"));
    }
    let (object_kind, object, next) = match upper(2).as_deref() {
        Some("ALL") => (wire::ObjectKind::All, String::new(), 3),
        Some("TABLE") => (wire::ObjectKind::Table, name_at(&w, 3, &err)?, 4),
        Some("NAMESPACE") => (wire::ObjectKind::Namespace, name_at(&w, 3, &err)?, 4),
        _ => return Err(err("expected TABLE, NAMESPACE or ALL after ON")),
    };
    if upper(next).as_deref() != Some("TO") {
        return Err(err("expected TO before the grantee"));
    }
    let grantee_kind = match upper(next + 1).as_deref() {
        Some("USER") => wire::GranteeKind::User,
        Some("GROUP") => wire::GranteeKind::Group,
        _ => return Err(err("expected USER or GROUP after TO")),
    };
    let grantee = name_at(&w, next + 2, &err)?;
    if w.len() > next + 3 {
        return Err(err("unexpected words after the grantee"));
    }
    Ok(wire::GrantSpec {
        privilege: privilege as i32,
        object_kind: object_kind as i32,
        object,
        grantee_kind: grantee_kind as i32,
        grantee,
    })
}

fn name_at(w: &[&str], i: usize, err: &dyn Fn(&str) -> ClientError) -> Result<String, ClientError> {
    w.get(i)
        .map(|s| s.to_string())
        .ok_or_else(|| err("a name is missing"))
}

/// `read ON TABLE shop.orders TO USER ann`.
pub(crate) fn describe(g: &wire::GrantSpec) -> String {
    let privilege = match wire::Privilege::try_from(g.privilege) {
        Ok(wire::Privilege::Read) => "read",
        Ok(wire::Privilege::Write) => "write",
        Ok(wire::Privilege::Admin) => "admin",
        Ok(wire::Privilege::Unspecified) | Err(_) => "?",
    };
    let object = match wire::ObjectKind::try_from(g.object_kind) {
        Ok(wire::ObjectKind::All) => "ALL".to_string(),
        Ok(wire::ObjectKind::Table) => format!("TABLE {}", g.object),
        Ok(wire::ObjectKind::Namespace) => format!("NAMESPACE {}", g.object),
        Ok(wire::ObjectKind::Unspecified) | Err(_) => format!("? {}", g.object),
    };
    let grantee = match wire::GranteeKind::try_from(g.grantee_kind) {
        Ok(wire::GranteeKind::User) => "USER",
        Ok(wire::GranteeKind::Group) => "GROUP",
        Ok(wire::GranteeKind::Unspecified) | Err(_) => "?",
    };
    format!("{privilege} ON {object} TO {grantee} {}", g.grantee)
}

async fn run_inner(conn: &Connection, cmd: AccessCommand) -> Result<(), ClientError> {
    let server = conn.server.as_str();
    let mut client = AccessServiceClient::new(conn.channel()?);
    let rpc_err = |s: tonic::Status| ClientError::from_status(server, &s);
    match cmd {
        AccessCommand::Grant(words) => {
            let grant = parse_grant(&words)?;
            let text = describe(&grant);
            client
                .grant(wire::GrantRequest { grant: Some(grant) })
                .await
                .map_err(rpc_err)?;
            println!("granted {text}");
        }
        AccessCommand::Revoke(words) => {
            let grant = parse_grant(&words)?;
            let text = describe(&grant);
            client
                .revoke(wire::RevokeRequest { grant: Some(grant) })
                .await
                .map_err(rpc_err)?;
            println!("revoked {text}");
        }
        AccessCommand::Grants { name, format } => {
            let grants = client
                .list_grants(wire::ListGrantsRequest {
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(rpc_err)?
                .into_inner()
                .grants;
            for g in &grants {
                match format {
                    OutputFormat::Text => println!("{}", describe(g)),
                    OutputFormat::Json => println!(
                        "{}",
                        json!({"grant": describe(g), "object": g.object, "grantee": g.grantee})
                    ),
                }
            }
        }
        AccessCommand::Token(TokenCommand::Create { user, description }) => {
            let created = client
                .create_token(wire::CreateTokenRequest { user, description })
                .await
                .map_err(rpc_err)?
                .into_inner();
            eprintln!(
                "token {} created; it is shown only now, keep it secret",
                created.token_id
            );
            println!("{}", created.token);
        }
        AccessCommand::Token(TokenCommand::Revoke { token_id }) => {
            client
                .revoke_token(wire::RevokeTokenRequest { token_id })
                .await
                .map_err(rpc_err)?;
            println!("revoked");
        }
        AccessCommand::Token(TokenCommand::FileAdd { user, token_file }) => {
            let user = user.trim();
            if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ClientError::new(
                    "the user must be a non-empty name without blanks",
                ));
            }
            let new = crate::access::token::generate().map_err(ClientError::new)?;
            crate::access::token_file::append(&token_file, user, &new.stored).map_err(|e| {
                ClientError::new(format!(
                    "cannot append to the token file {}: {e}; check the path and permissions",
                    token_file.display()
                ))
            })?;
            eprintln!(
                "added token {} for user {user} to {}; servers reading it with --token-file \
                 accept it after their next reload (or SIGHUP). The token, shown only now:",
                new.stored.id,
                token_file.display()
            );
            println!("{}", new.token);
        }
        AccessCommand::Token(TokenCommand::List { format }) => {
            let tokens = client
                .list_tokens(wire::ListTokensRequest {})
                .await
                .map_err(rpc_err)?
                .into_inner()
                .tokens;
            for t in &tokens {
                let state = if t.revoked_ms == 0 { "live" } else { "revoked" };
                match format {
                    OutputFormat::Text => {
                        println!("{}\t{}\t{state}\t{}", t.token_id, t.user, t.description)
                    }
                    OutputFormat::Json => println!(
                        "{}",
                        json!({"token_id": t.token_id, "user": t.user, "state": state,
                               "description": t.description, "created_ms": t.created_ms,
                               "revoked_ms": t.revoked_ms})
                    ),
                }
            }
        }
        AccessCommand::Group(GroupCommand::Add { group, user }) => {
            client
                .add_group_member(wire::GroupMemberRequest {
                    group: group.clone(),
                    user: user.clone(),
                })
                .await
                .map_err(rpc_err)?;
            println!("added {user} to {group}");
        }
        AccessCommand::Group(GroupCommand::Remove { group, user }) => {
            client
                .remove_group_member(wire::GroupMemberRequest {
                    group: group.clone(),
                    user: user.clone(),
                })
                .await
                .map_err(rpc_err)?;
            println!("removed {user} from {group}");
        }
        AccessCommand::WhoAmI => {
            let me = client
                .who_am_i(wire::WhoAmIRequest {})
                .await
                .map_err(rpc_err)?
                .into_inner();
            println!(
                "{} (by {}; groups: {})",
                me.user,
                me.authenticated_by,
                if me.groups.is_empty() {
                    "none".to_string()
                } else {
                    me.groups.join(", ")
                }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn grant_words_parse() {
        let g = parse_grant(&words("read ON TABLE shop.orders TO USER ann")).unwrap();
        assert_eq!(describe(&g), "read ON TABLE shop.orders TO USER ann");
        let g = parse_grant(&words("ADMIN on all to group ops")).unwrap();
        assert_eq!(describe(&g), "admin ON ALL TO GROUP ops");
        let g = parse_grant(&words("write on namespace shop to user bob")).unwrap();
        assert_eq!(describe(&g), "write ON NAMESPACE shop TO USER bob");
        assert!(parse_grant(&words("read TABLE x TO USER a")).is_err());
        assert!(parse_grant(&words("read ON TABLE x TO USER")).is_err());
        assert!(parse_grant(&words("own ON ALL TO USER a")).is_err());
        assert!(parse_grant(&words("read ON ALL TO USER a b")).is_err());
    }
}
