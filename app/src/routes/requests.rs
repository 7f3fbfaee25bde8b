use leptos::prelude::*;

use crate::api::requests::my_requests;
use crate::components::flash::{ErrorNotice, FlashNotice};
use crate::model::request::RequestView;

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
