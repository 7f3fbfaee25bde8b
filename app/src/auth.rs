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

/// Returns the caller if they have `persona`, for server functions to call first.
#[cfg(feature = "ssr")]
pub fn require(persona: Persona) -> Result<CurrentUser, AccessError> {
    let user = request_user().ok_or(AccessError::SignedOut)?;
    if user.is(persona) {
        Ok(user)
    } else {
        Err(AccessError::Forbidden(persona))
    }
}

/// Returns the signed-in user, or `None`.
#[server(endpoint = "current_user")]
pub async fn get_current_user() -> Result<Option<CurrentUser>, ServerFnError> {
    Ok(request_user())
}
