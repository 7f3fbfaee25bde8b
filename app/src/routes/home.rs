use leptos::prelude::*;

use crate::components::hydration::{use_hydrated, HydrationBadge};

/// Landing page: what Stint does, with a list that becomes collapsible once the page is
/// interactive.
#[component]
pub fn HomePage() -> impl IntoView {
    let hydrated = use_hydrated();
    let show_steps = RwSignal::new(true);

    view! {
        <section class="hero">
            <h1>"Temporary access, granted on request"</h1>
            <p class="lead">
                "Stint hands out Keycloak roles for a limited time. You ask for a role, an "
                "approver agrees, and the role is added to your account when the grant starts "
                "and removed when it ends."
            </p>
            <HydrationBadge hydrated />
        </section>
        <section class="card">
            <div class="card-title">
                <h2>"How a grant works"</h2>
                <Show when=move || hydrated.get()>
                    <button
                        type="button"
                        class="link-button"
                        data-testid="toggle-steps"
                        aria-controls="grant-steps"
                        aria-expanded=move || show_steps.get().to_string()
                        on:click=move |_| show_steps.update(|shown| *shown = !*shown)
                    >
                        {move || if show_steps.get() { "Hide the steps" } else { "Show the steps" }}
                    </button>
                </Show>
            </div>
            <ol id="grant-steps" class="steps" hidden=move || !show_steps.get()>
                <li>"Pick a role from the catalog and say why you need it and for how long."</li>
                <li>"An approver reviews the request and approves or denies it."</li>
                <li>"Stint adds the Keycloak role mapping when the grant starts."</li>
                <li>"Stint removes the mapping when the grant ends, and records both steps."</li>
            </ol>
        </section>
    }
}
