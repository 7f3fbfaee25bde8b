//! Entry pages of the approver, auditor and admin personas.

use leptos::prelude::*;

use crate::api::requests::approval_queue;
use crate::components::flash::{ErrorNotice, FlashNotice};
use crate::components::guard::RequirePersona;
use crate::model::user::Persona;
use crate::routes::requests::RequestCard;

#[component]
pub fn ApprovalsPage() -> impl IntoView {
    // Created here, once per page: the guard may render its children more than once, and
    // each load takes the flash message out of the session.
    let data = Resource::new_blocking(|| (), |_| approval_queue());
    view! {
        <RequirePersona
            persona=Persona::Approver
            children=move |_| view! { <ApprovalQueue data /> }
        />
    }
}

type QueueResource = Resource<
    Result<
        (
            Vec<crate::model::request::RequestView>,
            crate::model::request::Flash,
        ),
        crate::auth::AccessError,
    >,
>;

#[component]
fn ApprovalQueue(data: QueueResource) -> impl IntoView {
    view! {
        <section class="card" data-testid="approvals-page">
            <h1>"Approvals"</h1>
            <p class="muted">"Requests that you may decide, oldest first."</p>
        </section>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Ok((requests, flash)) => view! {
                        <FlashNotice flash />
                        {if requests.is_empty() {
                            view! { <p class="card muted" data-testid="queue-empty">"No request waits for your decision."</p> }.into_any()
                        } else {
                            requests.into_iter().map(|request| {
                                let action = format!("/requests/{}/decide", request.id);
                                let id = request.id.clone();
                                view! {
                                    <div class="queue-item" data-request-id=id>
                                        <RequestCard request />
                                        <form method="post" action=action class="decision" data-testid="decision-form">
                                            <label>"Comment" <input name="comment" maxlength="1000" /></label>
                                            <button type="submit" name="decision" value="approve" data-testid="approve">"Approve"</button>
                                            <button type="submit" name="decision" value="deny" data-testid="deny">"Deny"</button>
                                        </form>
                                    </div>
                                }
                            }).collect_view().into_any()
                        }}
                    }.into_any(),
                    Err(error) => view! { <ErrorNotice message=error.to_string() /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
pub fn AuditPage() -> impl IntoView {
    view! {
        <RequirePersona
            persona=Persona::Auditor
            children=|_| {
                view! {
                    <section class="card" data-testid="audit-page">
                        <h1>"Audit"</h1>
                        <p>"The grant history and its exports are listed here."</p>
                    </section>
                }
            }
        />
    }
}

#[component]
pub fn AdminPage() -> impl IntoView {
    let flagged = Resource::new_blocking(|| (), |_| crate::api::requests::flagged_requests());
    view! {
        <RequirePersona
            persona=Persona::Admin
            children=move |_| {
                view! {
                    <section class="card" data-testid="admin-page">
                        <h1>"Admin"</h1>
                        <h2>"Requests that need an administrator"</h2>
                    </section>
                    <Suspense fallback=|| ()>
                        {move || Suspend::new(async move {
                            match flagged.await {
                                Ok(items) if items.is_empty() => view! {
                                    <p class="card muted" data-testid="flagged-empty">"No request is stuck."</p>
                                }.into_any(),
                                Ok(items) => items.into_iter().map(|(request, reason)| view! {
                                    <div class="flagged" data-testid="flagged-request">
                                        <p class="notice notice-error" data-testid="flag-reason">{reason}</p>
                                        <RequestCard request />
                                    </div>
                                }).collect_view().into_any(),
                                Err(error) => view! { <ErrorNotice message=error.to_string() /> }.into_any(),
                            }
                        })}
                    </Suspense>
                }
            }
        />
    }
}
