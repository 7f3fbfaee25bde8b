use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use crate::api::requests::list_catalog;
use crate::components::flash::ErrorNotice;
use crate::model::request::RoleView;

/// Requestable roles, filtered by a search box that works as a plain GET form.
#[component]
pub fn CatalogPage() -> impl IntoView {
    let query = use_query_map();
    let search = move || query.with(|query| query.get("q").unwrap_or_default());
    let roles = Resource::new_blocking(search, list_catalog);

    view! {
        <section class="card">
            <h1>"Catalog"</h1>
            <form method="get" action="/catalog" class="search">
                <label for="q">"Search roles"</label>
                <input id="q" name="q" type="search" value=search data-testid="catalog-search" />
                <button type="submit">"Search"</button>
            </form>
        </section>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match roles.await {
                    Ok(roles) if roles.is_empty() => {
                        view! { <p class="card muted" data-testid="catalog-empty">"No requestable role matches."</p> }.into_any()
                    }
                    Ok(roles) => roles.into_iter().map(|role| view! { <RoleCard role /> }).collect_view().into_any(),
                    Err(error) => view! { <ErrorNotice message=error.to_string() /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn RoleCard(role: RoleView) -> impl IntoView {
    let approval = if role.auto_approved {
        "Approved automatically for you".to_owned()
    } else {
        format!(
            "{} approval{} from {}",
            role.approvals_required,
            if role.approvals_required == 1 {
                ""
            } else {
                "s"
            },
            role.approver_groups.join(", ")
        )
    };
    let href = format!(
        "/requests/new?role={}",
        crate::url::encode_query_value(&role.key)
    );
    view! {
        <article class="card role" data-testid="catalog-role" data-role=role.key.clone()>
            <h2>{role.display_name.clone()}</h2>
            <p>{role.description.clone()}</p>
            <dl class="facts">
                <dt>"Keycloak role"</dt>
                <dd>{role.target.clone()}</dd>
                <dt>"Duration"</dt>
                <dd>{format!("{} by default, at most {}", role.default_duration, role.max_duration)}</dd>
                <dt>"Approval"</dt>
                <dd>{approval}</dd>
                <dt>"Ticket"</dt>
                <dd>{if role.ticket_required { "required" } else { "optional" }}</dd>
            </dl>
            <a class="button" href=href data-testid="request-role">"Request"</a>
        </article>
    }
}
