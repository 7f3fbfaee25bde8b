//! The Stint portal's user interface: pages, components and server functions.
//!
//! Compiled twice: with `ssr` into the server binary, which renders every page, and with
//! `hydrate` into the wasm bundle, which makes the rendered pages interactive.

pub mod api;
pub mod auth;
pub mod components;
pub mod model;
pub mod routes;
#[cfg(feature = "ssr")]
pub mod server;
pub mod url;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::{
    components::{Route, Router, Routes},
    ParamSegment, SsrMode, StaticSegment,
};

use crate::components::layout::Layout;
use crate::routes::{
    audit::{AuditPage, GrantTimelinePage},
    catalog::CatalogPage,
    home::HomePage,
    me::MePage,
    not_found::NotFound,
    persona_pages::{AdminPage, ApprovalsPage},
    request_new::NewRequestPage,
    requests::MyRequestsPage,
    signin_error::SignInErrorPage,
};

/// File stem of the wasm-bindgen output and of the stylesheet under `/pkg`.
pub const OUTPUT_NAME: &str = "stint";

/// The path prefix of every server function, which is the default of Leptos's `#[server]`.
pub const API_PREFIX: &str = "/api/";

/// Extra origins that the Content-Security-Policy of pages allows as form targets: signing
/// out posts to the portal, which redirects to Keycloak, and `form-action` covers redirects.
#[derive(Clone, Debug, Default)]
pub struct CspSources {
    pub form_action: String,
}

/// Renders the HTML document around the application.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    #[cfg(feature = "ssr")]
    set_content_security_policy();

    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" type="image/svg+xml" href="/favicon.svg" />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

/// Sets a Content-Security-Policy with this response's nonce: only the portal's own
/// scripts and the nonce-carrying hydration script run, and the wasm bundle may compile.
#[cfg(feature = "ssr")]
fn set_content_security_policy() {
    use axum::http::{header, HeaderValue};

    let nonce = leptos::nonce::use_nonce()
        .map(|nonce| nonce.to_string())
        .unwrap_or_default();
    let form_action = use_context::<CspSources>()
        .map(|sources| sources.form_action)
        .unwrap_or_default();
    let policy = format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         form-action 'self' {form_action}; frame-ancestors 'none'; base-uri 'none'; \
         object-src 'none'"
    );
    if let (Some(response), Ok(value)) = (
        use_context::<leptos_axum::ResponseOptions>(),
        HeaderValue::from_str(&policy),
    ) {
        response.insert_header(header::CONTENT_SECURITY_POLICY, value);
    }
}

/// The application's root component: metadata and routes.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();

    view! {
        <Stylesheet id="stint" href=format!("/pkg/{OUTPUT_NAME}.css") />
        <Title text="Stint" />
        // Every route renders completely on the server before the response is sent, so pages
        // that wait for data (the signed-in user, for one) are whole without JavaScript.
        <Router>
            <Layout>
                <Routes fallback=NotFound>
                    <Route path=StaticSegment("") view=HomePage ssr=SsrMode::Async />
                    <Route path=StaticSegment("me") view=MePage ssr=SsrMode::Async />
                    <Route path=StaticSegment("catalog") view=CatalogPage ssr=SsrMode::Async />
                    <Route path=StaticSegment("requests") view=MyRequestsPage ssr=SsrMode::Async />
                    <Route
                        path=(StaticSegment("requests"), StaticSegment("new"))
                        view=NewRequestPage
                        ssr=SsrMode::Async
                    />
                    <Route path=StaticSegment("approvals") view=ApprovalsPage ssr=SsrMode::Async />
                    <Route path=StaticSegment("audit") view=AuditPage ssr=SsrMode::Async />
                    <Route
                        path=(StaticSegment("audit"), StaticSegment("grants"), ParamSegment("id"))
                        view=GrantTimelinePage
                        ssr=SsrMode::Async
                    />
                    <Route path=StaticSegment("admin") view=AdminPage ssr=SsrMode::Async />
                    <Route path=StaticSegment("signin-error") view=SignInErrorPage ssr=SsrMode::Async />
                </Routes>
            </Layout>
        </Router>
    }
}
