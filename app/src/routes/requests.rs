use leptos::prelude::*;

use crate::api::requests::my_requests;
use crate::components::flash::{ErrorNotice, FlashNotice};
use crate::model::request::{GrantView, RequestView};

/// The caller's requests with their timelines.
#[component]
pub fn MyRequestsPage() -> impl IntoView {
    let data = Resource::new_blocking(|| (), |_| my_requests());

    view! {
        <section class="card">
            <h1>"My requests"</h1>
            <p><a href="/catalog">"Request a role"</a></p>
        </section>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Ok((requests, flash)) => view! {
                        <FlashNotice flash />
                        {if requests.is_empty() {
                            view! { <p class="card muted">"You have not requested any role yet."</p> }.into_any()
                        } else {
                            requests.into_iter().map(|request| view! { <RequestCard request cancellable=true /> }).collect_view().into_any()
                        }}
                    }.into_any(),
                    Err(error) => view! { <ErrorNotice message=error.to_string() /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// One request with its facts and timeline; with `cancellable`, a cancel button while pending.
#[component]
pub fn RequestCard(request: RequestView, #[prop(optional)] cancellable: bool) -> impl IntoView {
    let pending = request.status == "pending";
    let cancel_action = format!("/requests/{}/cancel", request.id);
    view! {
        <article
            class="card request"
            data-testid="request"
            data-request-id=request.id.clone()
            data-status=request.status.clone()
            data-role=request.role_key.clone()
        >
            <h2>{request.role_name.clone()} " " <span class=format!("status status-{}", request.status) data-testid="request-status">{request.status.clone()}</span></h2>
            <dl class="facts">
                <dt>"Requester"</dt><dd data-testid="request-requester">{request.requester.clone()}</dd>
                <dt>"Duration"</dt><dd>{request.duration.clone()}</dd>
                <dt>"Start"</dt><dd>{request.starts.clone()}</dd>
                <dt>"Approvals"</dt><dd data-testid="request-approvals">{format!("{} of {}", request.approvals, request.approvals_required)}</dd>
                <dt>"Justification"</dt><dd data-testid="request-justification">{request.justification.clone()}</dd>
                <dt>"Ticket"</dt><dd>{request.ticket.clone()}</dd>
                {(!request.requester_roles.is_empty()).then(|| view! {
                    <dt>"Requester's realm roles now"</dt>
                    <dd data-testid="requester-roles">{request.requester_roles.join(", ")}</dd>
                })}
            </dl>
            {request.extends_grant_id.clone().map(|grant| view! {
                <p class="muted" data-testid="extends">{format!("Extends grant {grant}")}</p>
            })}
            {request.grant.clone().map(|grant| view! { <GrantFacts grant holder=cancellable role_key=request.role_key.clone() /> })}
            <ol class="timeline">
                {request.events.iter().map(|event| view! {
                    <li>{format!("{} · {} · {}", event.at, event.actor, event.action)}{(!event.comment.is_empty()).then(|| format!(": {}", event.comment))}</li>
                }).collect_view()}
            </ol>
            {(cancellable && pending).then(|| view! {
                <form method="post" action=cancel_action>
                    <button type="submit" class="link-button" data-testid="cancel-request">"Cancel request"</button>
                </form>
            })}
        </article>
    }
}

/// Renders the grant made from a request: its window, status and outcome, and for its
/// holder the buttons to end it now or ask for more time.
#[component]
pub fn GrantFacts(
    grant: GrantView,
    #[prop(optional)] holder: bool,
    role_key: String,
) -> impl IntoView {
    let end_action = format!("/grants/{}/end", grant.id);
    let extend_href = format!(
        "/requests/new?role={}",
        crate::url::encode_query_value(&role_key)
    );
    view! {
        <div class="grant" data-testid="grant" data-grant-id=grant.id.clone() data-grant-status=grant.status.clone()>
            <p>
                "Grant " <span class=format!("status status-{}", grant.status) data-testid="grant-status">{grant.status.clone()}</span>
                {format!(" from {} to {}", grant.starts, grant.ends)}
            </p>
            {(!grant.outcome.is_empty()).then(|| view! { <p data-testid="grant-outcome">{grant.outcome.clone()}</p> })}
            {grant.preexisting.then(|| view! { <p class="muted">"You held this role before the grant; it stays after the grant ends."</p> })}
            {grant.still_effective.then(|| view! { <p class="notice notice-error" data-testid="still-effective">"The role is still effective through a group or a composite role."</p> })}
            {(!grant.tokens_expire_by.is_empty()).then(|| view! { <p class="muted">{format!("Tokens issued before the end expire by {}.", grant.tokens_expire_by)}</p> })}
            {(!grant.last_error.is_empty()).then(|| view! {
                <p class="notice notice-error" data-testid="grant-error">{format!("Attempt {} failed: {}. Next attempt at {}.", grant.attempts, grant.last_error, grant.next_attempt)}</p>
            })}
            {(holder && (grant.can_end || grant.can_extend)).then(|| view! {
                <div class="actions">
                    {grant.can_extend.then(|| view! { <a href=extend_href.clone() data-testid="extend-grant">"Ask to extend"</a> })}
                    {grant.can_end.then(|| view! {
                        <form method="post" action=end_action.clone()>
                            <button type="submit" class="link-button" data-testid="end-grant">"End now"</button>
                        </form>
                    })}
                </div>
            })}
        </div>
    }
}
