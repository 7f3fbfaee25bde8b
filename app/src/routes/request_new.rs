use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use crate::api::requests::request_form;
use crate::components::flash::{ErrorNotice, FlashNotice};
use crate::model::request::{Flash, RoleView};

/// The request form for one role. It posts to `/requests/submit`, which redirects back here
/// with the entered values and field errors when a check fails.
#[component]
pub fn NewRequestPage() -> impl IntoView {
    let query = use_query_map();
    let role = move || query.with(|query| query.get("role").unwrap_or_default());
    let data = Resource::new_blocking(role, request_form);

    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Ok((Some(role), flash)) => view! { <RequestForm role flash /> }.into_any(),
                    Ok((None, _)) => view! {
                        <section class="card" data-testid="unknown-role">
                            <h1>"Role not available"</h1>
                            <p>"This role is not in the catalog, or you may not request it. " <a href="/catalog">"Open the catalog"</a></p>
                        </section>
                    }.into_any(),
                    Err(error) => view! { <ErrorNotice message=error.to_string() /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn RequestForm(role: RoleView, flash: Flash) -> impl IntoView {
    let value = |name: &str| flash.values.get(name).cloned().unwrap_or_default();
    let field_error = |name: &str| {
        flash.field_errors.get(name).cloned().map(|message| {
            view! { <p class="field-error" data-testid=format!("error-{name}")>{message}</p> }
        })
    };
    let duration = {
        let entered = value("duration");
        if entered.is_empty() {
            role.default_duration.clone()
        } else {
            entered
        }
    };
    let choices = role.duration_choices.clone();

    view! {
        <section class="card">
            <h1>{format!("Request {}", role.display_name)}</h1>
            <p class="muted">{format!("At most {}. ", role.max_duration)}{
                if role.auto_approved { "Your request is approved automatically." } else { "An approver reviews your request." }
            }</p>
            <FlashNotice flash=flash.clone() />
            <form method="post" action="/requests/submit" class="request-form" data-testid="request-form">
                <input type="hidden" name="role" value=role.key.clone() />
                <label for="duration">"Duration"</label>
                <input id="duration" name="duration" list="duration-choices" value=duration required />
                <datalist id="duration-choices">
                    {choices.into_iter().map(|choice| view! { <option value=choice></option> }).collect_view()}
                </datalist>
                {field_error("duration")}
                <label for="starts_at">"Start (UTC; leave empty to start when approved)"</label>
                <input id="starts_at" name="starts_at" type="datetime-local" value=value("starts_at") />
                {field_error("starts_at")}
                <label for="justification">
                    {if role.justification_required { "Justification (required)" } else { "Justification" }}
                </label>
                <textarea id="justification" name="justification" rows="3" maxlength="2000">{value("justification")}</textarea>
                {field_error("justification")}
                <label for="ticket">
                    {if role.ticket_required { "Ticket (required)" } else { "Ticket" }}
                    {role.ticket_pattern.clone().map(|pattern| format!(", matching {pattern}"))}
                </label>
                <input id="ticket" name="ticket" value=value("ticket") maxlength="64" />
                {field_error("ticket")}
                <button type="submit" data-testid="submit-request">"Send request"</button>
            </form>
        </section>
    }
}
