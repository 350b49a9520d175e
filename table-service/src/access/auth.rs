//! Authentication: a tonic interceptor in front of every unitable service that turns the
//! request's credentials into a [`Principal`] in its extensions.
//!
//! In order: a bearer token (`authorization: Bearer ut_...`, or `Basic base64(USER:TOKEN)` as
//! Flight clients send a user name and password) must be live, else the call is
//! UNAUTHENTICATED (a wrong token never falls back to anything); else a client certificate
//! verified by the TLS layer against `--tls-client-ca` names the user by its first DNS
//! subject-alternative name; else, with `--allow-anonymous`, the caller is anonymous with full
//! access; else UNAUTHENTICATED.

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::audit::Outcome;
use super::{Access, AuthMethod, Principal};
use crate::status::ApiError;

/// The interceptor.
#[derive(Debug, Clone)]
pub(crate) struct Authenticator {
    access: Access,
}

impl Authenticator {
    pub(crate) fn new(access: Access) -> Self {
        Self { access }
    }

    fn principal<T>(&self, request: &Request<T>) -> Result<Principal, ApiError> {
        if let Some(value) = request.metadata().get("authorization") {
            let text = value.to_str().unwrap_or_default();
            let (named, token) = match basic(text) {
                Some(pair) => pair?,
                None => (None, bearer(text).to_string()),
            };
            let token = token.as_str();
            return match self.access.policy().authenticate(token) {
                Some(user) if named.as_deref().is_some_and(|n| n != user) => {
                    Err(ApiError::Unauthenticated {
                        reason: format!(
                            "basic authentication named user `{}`, but the token is `{user}`'s; \
                             give the token's user or an empty user name",
                            named.unwrap_or_default()
                        ),
                    })
                }
                Some(user) => Ok(Principal::User {
                    name: user.to_string(),
                    via: AuthMethod::Token,
                    token_id: super::token::parse(token).map(|p| p.id.to_string()),
                }),
                None => Err(ApiError::Unauthenticated {
                    reason: "the token is unknown, malformed or revoked; ask an admin for a new \
                             one (`unitable token create USER`)"
                        .into(),
                }),
            };
        }
        if let Some(certs) = request.peer_certs()
            && let Some(cert) = certs.first()
        {
            return match certificate_principal(cert) {
                Some(principal) => Ok(principal),
                None => Err(ApiError::Unauthenticated {
                    reason: "the client certificate names no user: it needs a DNS \
                             subject-alternative name"
                        .into(),
                }),
            };
        }
        if self.access.allow_anonymous() {
            return Ok(Principal::Anonymous);
        }
        Err(ApiError::Unauthenticated {
            reason: "this server requires credentials: pass --token (or set UNITABLE_TOKEN) \
                     with a token from `unitable token create`, or a client certificate"
                .into(),
        })
    }
}

/// The token of an `authorization: Bearer TOKEN` value (a bare token is accepted too).
fn bearer(text: &str) -> &str {
    text.strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .unwrap_or(text)
}

/// `authorization: Basic base64(USER:TOKEN)`, as Flight clients send a user name and password
/// (the password is a unitable token; the user may be empty): the user, if named, and the
/// token. `None` for other schemes.
fn basic(text: &str) -> Option<Result<(Option<String>, String), ApiError>> {
    use base64::Engine;
    let encoded = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))?;
    let malformed = || ApiError::Unauthenticated {
        reason: "the basic authentication header is malformed: expected base64 of \
                 `USER:TOKEN`"
            .into(),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let Some(decoded) = decoded else {
        return Some(Err(malformed()));
    };
    let Some((user, token)) = decoded.split_once(':') else {
        return Some(Err(malformed()));
    };
    let user = (!user.is_empty()).then(|| user.to_string());
    Some(Ok((user, token.to_string())))
}

/// The token a call authenticated with through its `authorization` header (bearer or basic),
/// for a Flight handshake to hand back as a bearer token.
pub(crate) fn bearer_of(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let text = metadata.get("authorization")?.to_str().ok()?;
    match basic(text) {
        Some(Ok((_, token))) => Some(token),
        Some(Err(_)) => None,
        None => Some(bearer(text).to_string()),
    }
}

/// The user a verified client certificate names (its first DNS subject-alternative name), as
/// a principal; `None` when it names none. gRPC and the RESP endpoint both map certificates
/// through this.
pub(crate) fn certificate_principal(
    cert: &rustls_pki_types::CertificateDer<'_>,
) -> Option<Principal> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let name = cert.valid_dns_names().next()?.to_string();
    Some(Principal::User {
        name,
        via: AuthMethod::Certificate,
        token_id: None,
    })
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.principal(&request) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            Err(e) => {
                self.access.audit().record(
                    "(unauthenticated)",
                    "authenticate",
                    None,
                    Outcome::Unauthenticated,
                    Some(&e.to_string()),
                );
                Err(e.into())
            }
        }
    }
}
