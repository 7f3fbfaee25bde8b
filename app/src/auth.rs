//! The signed-in user, as pages and server functions see it.
//!
//! The server resolves the user from the session on every request (refreshing Keycloak
//! tokens when they expire) and puts the result in the request's extensions. Server-side
//! code here reads it from there, and the browser calls [`get_current_user`].

use leptos::prelude::*;

use crate::model::user::{CurrentUser, Persona};

/// Request extension that the server sets on every request: `None` for a signed-out request.
#[derive(Clone, Debug, Default)]
pub struct RequestUser(pub Option<CurrentUser>);

/// Returns the user of the request being served.
#[cfg(feature = "ssr")]
pub fn request_user() -> Option<CurrentUser> {
    use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<RequestUser>().cloned())
        .and_then(|user| user.0)
}

/// An access check that failed, safe to show to the caller.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum AccessError {
    #[error("sign in to continue")]
    SignedOut,
    #[error("this needs the {} persona, which your Keycloak account does not have", .0.label())]
    Forbidden(Persona),
    #[error("{0}")]
    ServerFnError(#[from] ServerFnErrorErr),
}

impl leptos::server_fn::error::FromServerFnError for AccessError {
    type Encoder = leptos::server_fn::codec::JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        Self::ServerFnError(value)
    }
}

/// Returns the caller if they have `persona`, for server functions to call first. A
/// server-function call that fails the check gets 401 (signed out) or 403 (missing
/// persona), in place of 500, the status Leptos gives a server-function error by default.
#[cfg(feature = "ssr")]
pub fn require(persona: Persona) -> Result<CurrentUser, AccessError> {
    let Some(user) = request_user() else {
        reject_call(401);
        return Err(AccessError::SignedOut);
    };
    if user.is(persona) {
        Ok(user)
    } else {
        tracing::info!(subject = %user.subject, persona = persona.label(), "server function call rejected: missing persona");
        reject_call(403);
        Err(AccessError::Forbidden(persona))
    }
}

/// Sets `status` on the response when the request is a server-function call. A page that
/// calls a server function while it renders keeps the status that its own guard sets.
#[cfg(feature = "ssr")]
fn reject_call(status: u16) {
    let is_call = use_context::<axum::http::request::Parts>()
        .is_some_and(|parts| parts.uri.path().starts_with(crate::API_PREFIX));
    if is_call {
        crate::components::guard::set_status(status);
    }
}

/// Returns the signed-in user, or `None`.
#[server(endpoint = "current_user")]
pub async fn get_current_user() -> Result<Option<CurrentUser>, ServerFnError> {
    Ok(request_user())
}
