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
pub fn AdminPage() -> impl IntoView {
    let flagged = Resource::new_blocking(|| (), |_| crate::api::requests::flagged_requests());
    let status = Resource::new_blocking(|| (), |_| crate::api::requests::grant_status());
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
                    <Suspense fallback=|| ()>
                        {move || Suspend::new(async move {
                            match status.await {
                                Ok(status) => view! { <GrantStatusSections status /> }.into_any(),
                                Err(error) => view! { <ErrorNotice message=error.to_string() /> }.into_any(),
                            }
                        })}
                    </Suspense>
                }
            }
        />
    }
}

/// Renders the scheduler's status for admins, one table per section.
#[component]
fn GrantStatusSections(status: crate::model::request::GrantStatusView) -> impl IntoView {
    use crate::model::request::GrantView;
    fn table(
        title: &'static str,
        testid: &'static str,
        empty: &'static str,
        grants: Vec<GrantView>,
        when: fn(&GrantView) -> String,
    ) -> impl IntoView {
        view! {
            <section class="card" data-testid=testid>
                <h2>{title}</h2>
                {if grants.is_empty() {
                    view! { <p class="muted">{empty}</p> }.into_any()
                } else {
                    view! {
                        <table>
                            <thead><tr><th>"User"</th><th>"Role"</th><th>"Status"</th><th>"When"</th><th>"Details"</th></tr></thead>
                            <tbody>
                                {grants.into_iter().map(|grant| {
                                    let details = [grant.outcome.clone(), grant.last_error.clone()]
                                        .into_iter()
                                        .filter(|text| !text.is_empty())
                                        .chain(grant.still_effective.then(|| "still effective through a group or composite role".to_owned()))
                                        .collect::<Vec<_>>()
                                        .join("; ");
                                    view! {
                                        <tr data-testid="grant-row" data-grant-id=grant.id.clone() data-role=grant.role_key.clone()>
                                            <td>{grant.username.clone()}</td>
                                            <td>{grant.role_key.clone()}</td>
                                            <td>{grant.status.clone()}</td>
                                            <td>{when(&grant)}</td>
                                            <td>{details}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any()
                }}
            </section>
        }
    }
    view! {
        {table("Grants that need an administrator", "grants-attention", "No grant is failing.", status.attention, |grant| {
            if grant.last_error.is_empty() { grant.ends.clone() } else { format!("next attempt {}", grant.next_attempt) }
        })}
        {table("Upcoming starts", "grants-starting", "No grant is waiting to start.", status.upcoming_starts, |grant| grant.starts.clone())}
        {table("Upcoming ends", "grants-ending", "No grant is active.", status.upcoming_ends, |grant| grant.ends.clone())}
        <section class="card" data-testid="findings">
            <h2>"Reconciliation findings"</h2>
            {if status.findings.is_empty() {
                view! { <p class="muted">"Keycloak matches the grants."</p> }.into_any()
            } else {
                view! {
                    <table>
                        <thead><tr><th>"Finding"</th><th>"User"</th><th>"Role"</th><th>"Details"</th><th>"First seen"</th><th>"Last seen"</th></tr></thead>
                        <tbody>
                            {status.findings.into_iter().map(|finding| view! {
                                <tr data-testid="finding" data-kind=finding.kind.clone() data-role=finding.role_key.clone()>
                                    <td>{finding.kind.clone()}</td>
                                    <td>{finding.username}</td>
                                    <td>{finding.role_key.clone()}</td>
                                    <td>{finding.detail}</td>
                                    <td>{finding.first_seen}</td>
                                    <td>{finding.last_seen}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any()
            }}
        </section>
    }
}
