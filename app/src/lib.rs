//! The Stint portal's user interface: pages, components and server functions.
//!
//! Compiled twice: with `ssr` into the server binary, which renders every page, and with
//! `hydrate` into the wasm bundle, which makes the rendered pages interactive.

pub mod components;
pub mod routes;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::{
    components::{Route, Router, Routes},
    StaticSegment,
};

use crate::components::layout::Layout;
use crate::routes::{home::HomePage, not_found::NotFound};

/// File stem of the wasm-bindgen output and of the stylesheet under `/pkg`.
pub const OUTPUT_NAME: &str = "stint";

/// Renders the HTML document around the application.
pub fn shell(options: LeptosOptions) -> impl IntoView {
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

/// The application's root component: metadata and routes.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();

    view! {
        <Stylesheet id="stint" href=format!("/pkg/{OUTPUT_NAME}.css") />
        <Title text="Stint" />
        <Router>
            <Layout>
                <Routes fallback=NotFound>
                    <Route path=StaticSegment("") view=HomePage />
                </Routes>
            </Layout>
        </Router>
    }
}
