use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use crate::url::{encode_query_value, safe_return_to};

/// Why a sign-in failed, as the server's callback names it in `?reason=`. Only these fixed
/// texts are shown, so nothing from the query string is reflected into the page.
fn explain(reason: &str) -> (&'static str, &'static str) {
    match reason {
        "keycloak_unreachable" => (
            "Keycloak is unreachable",
            "The portal could not reach Keycloak to sign you in. Keycloak may be restarting; try again in a minute.",
        ),
        "access_denied" => (
            "Sign-in was cancelled",
            "Keycloak reported that the sign-in was denied or cancelled. Sign in again to continue.",
        ),
        "expired" => (
            "The sign-in expired",
            "The sign-in took too long, its link was used twice, or it was started in another browser. Start again from the sign-in button.",
        ),
        "state_mismatch" => (
            "The sign-in could not be matched",
            "The answer from Keycloak does not belong to a sign-in started in this browser. Start again from the sign-in button.",
        ),
        "missing_subject" => (
            "Keycloak sent no user id",
            "The ID token has no subject (`sub`). Ask an administrator to keep the `basic` client scope on the portal's client.",
        ),
        "invalid_token" => (
            "Keycloak's token was rejected",
            "The ID token failed validation (issuer, audience, signature or expiry). An administrator can find the reason in the portal's log.",
        ),
        _ => (
            "Sign-in failed",
            "The sign-in could not be completed. An administrator can find the reason in the portal's log.",
        ),
    }
}

/// Readable page for a failed sign-in, with a way to try again.
#[component]
pub fn SignInErrorPage() -> impl IntoView {
    let query = use_query_map();
    let reason = move || query.with(|query| query.get("reason").unwrap_or_default());
    let retry = move || {
        let target = query.with(|query| query.get("returnTo"));
        let target = target
            .as_deref()
            .and_then(safe_return_to)
            .unwrap_or("/")
            .to_owned();
        format!("/auth/login?returnTo={}", encode_query_value(&target))
    };

    view! {
        <section class="card" data-testid="signin-error">
            <h1>{move || explain(&reason()).0}</h1>
            <p>{move || explain(&reason()).1}</p>
            <p>
                <a class="button" href=retry rel="external" data-testid="retry-sign-in">
                    "Try again"
                </a>
            </p>
        </section>
    }
}
