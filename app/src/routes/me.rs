use leptos::prelude::*;

use crate::components::guard::RequirePersona;
use crate::model::user::{CurrentUser, Persona};

/// The signed-in user's identity and the groups and roles their Keycloak token contains.
#[component]
pub fn MePage() -> impl IntoView {
    view! { <RequirePersona persona=Persona::Requester children=|user| view! { <Profile user /> } /> }
}

#[component]
fn Profile(user: CurrentUser) -> impl IntoView {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            view! { <span class="muted">"none"</span> }.into_any()
        } else {
            view! { <ul class="tags">{items.into_iter().map(|item| view! { <li>{item}</li> }).collect_view()}</ul> }
                .into_any()
        }
    };
    let personas: Vec<String> = user.personas.iter().map(|p| p.label().to_owned()).collect();

    view! {
        <section class="card" data-testid="profile">
            <h1>"My access"</h1>
            <dl class="facts">
                <dt>"Username"</dt>
                <dd data-testid="username">{user.username.clone()}</dd>
                <dt>"Email"</dt>
                <dd>{user.email.clone().unwrap_or_default()}</dd>
                <dt>"Personas"</dt>
                <dd data-testid="personas">{list(personas)}</dd>
                <dt>"Groups"</dt>
                <dd data-testid="groups">{list(user.groups.clone())}</dd>
                <dt>"Realm roles"</dt>
                <dd data-testid="realm-roles">{list(user.realm_roles.clone())}</dd>
                <dt>"Portal client roles"</dt>
                <dd>{list(user.client_roles.clone())}</dd>
            </dl>
            <p class="muted">
                "Roles and groups come from your latest Keycloak token and refresh when it does."
            </p>
        </section>
    }
}
