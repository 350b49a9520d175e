//! Authentication: a tonic interceptor in front of every unitable service that turns the
//! request's credentials into a [`Principal`] in its extensions.
//!
//! In order: a bearer token (`authorization: Bearer ut_...`) must be live, else the call is
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
            let token = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
                .unwrap_or(text);
            return match self.access.policy().authenticate(token) {
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
            return match certificate_user(cert) {
                Some(user) => Ok(Principal::User {
                    name: user,
                    via: AuthMethod::Certificate,
                    token_id: None,
                }),
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

/// The user a client certificate names: its first DNS subject-alternative name.
fn certificate_user(cert: &rustls_pki_types::CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    cert.valid_dns_names().next().map(str::to_string)
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
