use leptos::prelude::*;

use crate::components::layout::UserResource;
use crate::model::user::{CurrentUser, Persona};

/// Renders `children` with the signed-in user when they have `persona`, and an explanation
/// otherwise. On the server it also sets the status: 401 for a signed-out request, 403 for a
/// missing persona. The server's route guard has already sent signed-out browsers to the
/// sign-in page; this is the page's own check.
#[component]
pub fn RequirePersona<F, V>(
    persona: Persona,
    /// A second persona that also opens the page.
    #[prop(optional)]
    also: Option<Persona>,
    children: F,
) -> impl IntoView
where
    F: Fn(CurrentUser) -> V + Send + Sync + 'static,
    V: IntoView + 'static,
{
    let user = expect_context::<UserResource>();
    let children = std::sync::Arc::new(children);

    view! {
        <Suspense fallback=|| ()>
            {
                let children = children.clone();
                move || {
                    let children = children.clone();
                    Suspend::new(async move {
                        match user.await.ok().flatten() {
                            Some(user) if user.is(persona) || also.is_some_and(|other| user.is(other)) => {
                                children(user).into_any()
                            }
                            Some(_) => {
                                set_status(403);
                                view! {
                                    <section class="card" data-testid="forbidden">
                                        <h1>"Not available to you"</h1>
                                        <p>
                                            "This page needs the " {persona.label()}
                                            " persona. Ask a Keycloak administrator to add you to the group that grants it."
                                        </p>
                                    </section>
                                }
                                    .into_any()
                            }
                            None => {
                                set_status(401);
                                view! {
                                    <section class="card" data-testid="signed-out">
                                        <h1>"Sign in to continue"</h1>
                                        <p>
                                            <a href="/auth/login" rel="external">"Sign in with Keycloak"</a>
                                        </p>
                                    </section>
                                }
                                    .into_any()
                            }
                        }
                    })
                }
            }
        </Suspense>
    }
}

/// Sets the response status during server rendering; does nothing in the browser.
pub(crate) fn set_status(_status: u16) {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        if let Ok(status) = axum::http::StatusCode::from_u16(_status) {
            response.set_status(status);
        }
    }
}
