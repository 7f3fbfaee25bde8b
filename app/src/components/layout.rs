use leptos::prelude::*;
use leptos_router::hooks::use_location;

use crate::auth::get_current_user;
use crate::model::user::{CurrentUser, Persona};
use crate::url::encode_query_value;

/// The signed-in user for every component under [`Layout`], loaded once per page.
pub type UserResource = Resource<Result<Option<CurrentUser>, ServerFnError>>;

/// Page frame: header with navigation for the user's personas, then the page itself.
#[component]
pub fn Layout(children: Children) -> impl IntoView {
    // Blocking, so the HTML already contains the navigation: pages work without JavaScript.
    let user: UserResource = Resource::new_blocking(|| (), |_| get_current_user());
    provide_context(user);

    view! {
        <header class="site-header">
            <a class="brand" href="/">
                "Stint"
            </a>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    let user = user.await.ok().flatten();
                    view! { <Navigation user /> }
                })}
            </Suspense>
        </header>
        <main class="page">{children()}</main>
        <footer class="site-footer">
            <span>"Stint: just-in-time access for Keycloak"</span>
        </footer>
    }
}

/// Links for what the user may use, and the sign-in or sign-out control.
#[component]
fn Navigation(user: Option<CurrentUser>) -> impl IntoView {
    let location = use_location();
    let sign_in_href = move || {
        let path = location.pathname.get();
        let query = location.search.get();
        // After a failed sign-in, signing in again should not lead back to the error page.
        let target = if path.starts_with("/signin-error") {
            "/".to_owned()
        } else if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        format!("/auth/login?returnTo={}", encode_query_value(&target))
    };

    match user {
        None => view! {
            <nav aria-label="Main" class="main-nav">
                <a href="/">"Home"</a>
            </nav>
            <div class="account">
                <a class="button" href=sign_in_href rel="external" data-testid="sign-in">
                    "Sign in"
                </a>
            </div>
        }
        .into_any(),
        Some(user) => {
            let links = [
                (Persona::Requester, "/catalog", "Catalog"),
                (Persona::Requester, "/requests", "My requests"),
                (Persona::Requester, "/me", "My access"),
                (Persona::Approver, "/approvals", "Approvals"),
                (Persona::Auditor, "/audit", "Audit"),
                (Persona::Admin, "/admin", "Admin"),
            ];
            let items = links
                .into_iter()
                .filter(|(persona, _, _)| user.is(*persona))
                .map(|(_, href, label)| view! { <a href=href>{label}</a> })
                .collect_view();
            view! {
                <nav aria-label="Main" class="main-nav" data-testid="main-nav">
                    <a href="/">"Home"</a>
                    {items}
                </nav>
                <div class="account">
                    <span class="who" data-testid="signed-in-as">{user.display_name.clone()}</span>
                    <form method="post" action="/auth/logout">
                        <button type="submit" class="link-button" data-testid="sign-out">
                            "Sign out"
                        </button>
                    </form>
                </div>
            }
            .into_any()
        }
    }
}
