use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use crate::api::requests::request_form;
use crate::components::flash::{ErrorNotice, FlashNotice};
use crate::model::request::{Flash, GrantView, RoleView};

/// The request form for one role. It posts to `/requests/submit`, which redirects back here
/// with the entered values and field errors when a check fails. While the user has an
/// active grant of the role, the form asks to extend that grant instead.
#[component]
pub fn NewRequestPage() -> impl IntoView {
    let query = use_query_map();
    let role = move || query.with(|query| query.get("role").unwrap_or_default());
    let data = Resource::new_blocking(role, request_form);

    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Ok((Some(role), grant, flash)) => view! { <RequestForm role grant flash /> }.into_any(),
                    Ok((None, _, _)) => view! {
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
fn RequestForm(role: RoleView, grant: Option<GrantView>, flash: Flash) -> impl IntoView {
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
    let extending = grant.as_ref().filter(|grant| grant.can_extend).cloned();
    let scheduled = grant.filter(|grant| !grant.can_extend);
    let heading = if extending.is_some() {
        format!("Extend {}", role.display_name)
    } else {
        format!("Request {}", role.display_name)
    };

    view! {
        <section class="card">
            <h1>{heading}</h1>
            <p class="muted">{format!("At most {}. ", role.max_duration)}{
                if role.auto_approved { "Your request is approved automatically." } else { "An approver reviews your request." }
            }</p>
            {extending.clone().map(|grant| view! {
                <p class="notice" data-testid="extension-notice">
                    {format!("You hold this role until {}. If this request is approved, the grant lasts the chosen duration longer.", grant.ends)}
                </p>
            })}
            {scheduled.map(|grant| view! {
                <p class="notice" data-testid="scheduled-notice">
                    {format!("You already have a grant of this role from {} to {}. A request that overlaps it is refused.", grant.starts, grant.ends)}
                </p>
            })}
            <FlashNotice flash=flash.clone() />
            <form method="post" action="/requests/submit" class="request-form" data-testid="request-form">
                <input type="hidden" name="role" value=role.key.clone() />
                {extending.clone().map(|grant| view! { <input type="hidden" name="extends" value=grant.id /> })}
                <label for="duration">"Duration"</label>
                <input id="duration" name="duration" list="duration-choices" value=duration required />
                <datalist id="duration-choices">
                    {choices.into_iter().map(|choice| view! { <option value=choice></option> }).collect_view()}
                </datalist>
                {field_error("duration")}
                {extending.is_none().then(|| view! {
                    <label for="starts_at">"Start (UTC; leave empty to start when approved)"</label>
                    <input id="starts_at" name="starts_at" type="datetime-local" value=value("starts_at") />
                })}
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
                <button type="submit" data-testid="submit-request">{if extending.is_some() { "Ask to extend" } else { "Send request" }}</button>
            </form>
        </section>
    }
}
