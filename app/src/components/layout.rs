use leptos::prelude::*;

/// Page frame: header with the product name and navigation, then the page itself.
#[component]
pub fn Layout(children: Children) -> impl IntoView {
    view! {
        <header class="site-header">
            <a class="brand" href="/">
                "Stint"
            </a>
            <nav aria-label="Main">
                <a href="/">"Home"</a>
            </nav>
        </header>
        <main class="page">{children()}</main>
        <footer class="site-footer">
            <span>"Stint: just-in-time access for Keycloak"</span>
        </footer>
    }
}
