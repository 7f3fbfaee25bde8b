//! The auditor pages: the grant history with filters, exports and a daily chart, and one
//! grant's timeline. Every part renders on the server and works without JavaScript.

use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};

use crate::api::audit::{audit_history, grant_timeline, HistoryQuery};
use crate::components::flash::{ErrorNotice, FlashNotice};
use crate::components::guard::RequirePersona;
use crate::model::request::{AuditGrantView, DayCount};
use crate::model::user::Persona;

#[component]
pub fn AuditPage() -> impl IntoView {
    let query = use_query_map();
    let filter = move || {
        query.with(|query| {
            let get = |key: &str| query.get(key).unwrap_or_default();
            HistoryQuery {
                user: get("user"),
                role: get("role"),
                approver: get("approver"),
                status: get("status"),
                from: get("from"),
                to: get("to"),
                ticket: get("ticket"),
            }
        })
    };
    let data = Resource::new_blocking(filter, audit_history);
    view! {
        <RequirePersona
            persona=Persona::Auditor
            also=Persona::Admin
            children=move |_| {
                let current = filter();
                view! {
                    <section class="card" data-testid="audit-page">
                        <h1>"Audit"</h1>
                        <p class="muted">"Who had which role, when, approved by whom, and why. Dates are UTC days."</p>
                        <form method="get" action="/audit" class="filters" data-testid="audit-filters">
                            <label>"User" <input name="user" value=current.user.clone() /></label>
                            <label>"Role" <input name="role" value=current.role.clone() /></label>
                            <label>"Approver" <input name="approver" value=current.approver.clone() /></label>
                            <label>"Status"
                                <select name="status">
                                    {["", "scheduled", "applying", "active", "revoking", "ended", "refused", "failed", "cancelled"].into_iter().map(|status| {
                                        let selected = status == current.status;
                                        view! { <option value=status selected=selected>{if status.is_empty() { "any" } else { status }}</option> }
                                    }).collect_view()}
                                </select>
                            </label>
                            <label>"From" <input name="from" type="date" value=current.from.clone() /></label>
                            <label>"To" <input name="to" type="date" value=current.to.clone() /></label>
                            <label>"Ticket" <input name="ticket" value=current.ticket.clone() /></label>
                            <button type="submit" data-testid="apply-filters">"Filter"</button>
                        </form>
                        <form method="post" action="/audit/verify" class="inline">
                            <button type="submit" data-testid="verify-chain">"Verify the audit chain"</button>
                        </form>
                    </section>
                    <Suspense fallback=|| ()>
                        {move || Suspend::new(async move {
                            match data.await {
                                Ok(history) => view! {
                                    <FlashNotice flash=history.flash.clone() />
                                    {history.filter_error.clone().map(|error| view! {
                                        <p class="notice notice-error" data-testid="filter-error">{error}</p>
                                    })}
                                    <section class="card">
                                        <p>
                                            "Export this history: "
                                            <a href=format!("/audit/export?format=csv&{}", history.query) data-testid="export-csv" download>"CSV"</a>
                                            " · "
                                            <a href=format!("/audit/export?format=json&{}", history.query) data-testid="export-json" download>"JSON lines"</a>
                                        </p>
                                        <ActiveChart days=history.chart.clone() />
                                    </section>
                                    <HistoryTable grants=history.grants.clone() truncated=history.truncated />
                                }.into_any(),
                                Err(error) => view! { <ErrorNotice message=error.to_string() /> }.into_any(),
                            }
                        })}
                    </Suspense>
                }
            }
        />
    }
}

/// Bars of the grants active on each day, drawn as SVG on the server.
#[component]
fn ActiveChart(days: Vec<DayCount>) -> impl IntoView {
    const WIDTH: f64 = 640.0;
    const HEIGHT: f64 = 120.0;
    let most = days.iter().map(|day| day.count).max().unwrap_or(0).max(1);
    let slot = WIDTH / days.len().max(1) as f64;
    let first = days.first().map(|day| day.day.clone()).unwrap_or_default();
    let last = days.last().map(|day| day.day.clone()).unwrap_or_default();
    let label =
        format!("Grants active per day from {first} to {last}; the most on one day: {most}");
    view! {
        <figure class="chart" data-testid="active-chart">
            <svg viewBox=format!("0 0 {WIDTH} {}", HEIGHT + 16.0) role="img" aria-label=label.clone() width="100%">
                <title>{label.clone()}</title>
                {days.iter().enumerate().map(|(index, day)| {
                    let height = f64::from(day.count) / f64::from(most) * HEIGHT;
                    view! {
                        <rect
                            x=format!("{:.1}", index as f64 * slot + 1.0)
                            y=format!("{:.1}", HEIGHT - height)
                            width=format!("{:.1}", (slot - 2.0).max(1.0))
                            height=format!("{height:.1}")
                            class="bar"
                            data-day=day.day.clone()
                            data-count=day.count
                        >
                            <title>{format!("{}: {} active", day.day, day.count)}</title>
                        </rect>
                    }
                }).collect_view()}
                <text x="0" y=format!("{}", HEIGHT + 14.0) class="axis">{first}</text>
                <text x=format!("{WIDTH}") y=format!("{}", HEIGHT + 14.0) text-anchor="end" class="axis">{last}</text>
            </svg>
            <figcaption class="muted">{format!("Grants active per day (most: {most}).")}</figcaption>
        </figure>
    }
}

#[component]
fn HistoryTable(grants: Vec<AuditGrantView>, truncated: bool) -> impl IntoView {
    if grants.is_empty() {
        return view! { <p class="card muted" data-testid="history-empty">"No grant matches the filter."</p> }.into_any();
    }
    view! {
        <section class="card">
            {truncated.then(|| view! { <p class="muted">"Only the newest grants are listed; narrow the filter or export to see all."</p> })}
            <table data-testid="history">
                <thead><tr><th>"User"</th><th>"Role"</th><th>"Status"</th><th>"From"</th><th>"To"</th><th>"Decisions"</th><th>"Ticket"</th><th>"Justification"</th></tr></thead>
                <tbody>
                    {grants.into_iter().map(|grant| view! {
                        <tr data-testid="history-row" data-grant-id=grant.id.clone() data-role=grant.role_key.clone() data-user=grant.username.clone()>
                            <td>{grant.username.clone()}</td>
                            <td><a href=format!("/audit/grants/{}", grant.id) data-testid="open-timeline">{grant.role_key.clone()}</a></td>
                            <td>{grant.status.clone()}</td>
                            <td>{grant.starts.clone()}</td>
                            <td>{if grant.revoked.is_empty() { grant.ends.clone() } else { grant.revoked.clone() }}</td>
                            <td>{grant.decisions.join(", ")}</td>
                            <td>{grant.ticket.clone()}</td>
                            <td>{grant.justification.clone()}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
        </section>
    }
    .into_any()
}

#[component]
pub fn GrantTimelinePage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.with(|params| params.get("id").unwrap_or_default());
    let data = Resource::new_blocking(id, grant_timeline);
    view! {
        <RequirePersona
            persona=Persona::Auditor
            also=Persona::Admin
            children=move |_| view! {
                <Suspense fallback=|| ()>
                    {move || Suspend::new(async move {
                        match data.await {
                            Ok(Some(timeline)) => {
                                let grant = timeline.grant;
                                view! {
                                    <section class="card" data-testid="timeline-page" data-grant-id=grant.id.clone()>
                                        <h1>{format!("{} for {}", grant.role_key, grant.username)}</h1>
                                        <dl class="facts">
                                            <dt>"Status"</dt><dd data-testid="timeline-status">{grant.status.clone()}</dd>
                                            <dt>"Window"</dt><dd>{format!("{} to {}", grant.starts, grant.ends)}</dd>
                                            <dt>"Applied"</dt><dd>{grant.applied.clone()}</dd>
                                            <dt>"Revoked"</dt><dd>{grant.revoked.clone()}</dd>
                                            <dt>"Decisions"</dt><dd>{grant.decisions.join(", ")}</dd>
                                            <dt>"Ticket"</dt><dd>{grant.ticket.clone()}</dd>
                                            <dt>"Justification"</dt><dd>{grant.justification.clone()}</dd>
                                            <dt>"Outcome"</dt><dd>{grant.outcome.clone()}</dd>
                                        </dl>
                                        <ol class="timeline" data-testid="timeline">
                                            {timeline.events.into_iter().map(|event| view! {
                                                <li data-testid="timeline-event">
                                                    {format!("{} · {} · {}", event.at, event.actor, event.action)}
                                                    {(!event.comment.is_empty()).then(|| format!(": {}", event.comment))}
                                                </li>
                                            }).collect_view()}
                                        </ol>
                                        <p><a href="/audit">"Back to the history"</a></p>
                                    </section>
                                }.into_any()
                            }
                            Ok(None) => {
                                crate::components::guard::set_status(404);
                                view! {
                                <section class="card" data-testid="timeline-missing"><h1>"Grant not found"</h1><p><a href="/audit">"Back to the history"</a></p></section>
                                }.into_any()
                            }
                            Err(error) => view! { <ErrorNotice message=error.to_string() /> }.into_any(),
                        }
                    })}
                </Suspense>
            }
        />
    }
}
