//! Form posts of the request pages: submit, cancel, approve and deny.
//!
//! These are plain HTML form targets, so they work before the wasm bundle loads and with
//! JavaScript off. Each checks the caller, applies the change, stores a flash message in
//! the session, and redirects (303) to the page that shows the result.

use app::api::requests::{may_approve, may_request, FLASH_KEY};
use app::auth::RequestUser;
use app::model::request::Flash;
use app::model::user::{CurrentUser, Persona};
use app::server::requests::rules::Decision;
use app::server::requests::store::{self, Actor, NewRequest, StoreError};
use app::server::requests::validate::{validate, RequestForm};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use axum::{Extension, Form, Router};
use serde::Deserialize;
use time::OffsetDateTime;
use tower_sessions::Session;

use crate::state::AppState;

/// Maximum length of an approver comment, in characters.
const MAX_COMMENT: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/requests/submit", post(submit))
        .route("/requests/{id}/cancel", post(cancel))
        .route("/requests/{id}/decide", post(decide))
        .route("/grants/{id}/end", post(end_grant))
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn actor(user: &CurrentUser) -> Actor {
    Actor {
        subject: user.subject.clone(),
        username: user.username.clone(),
    }
}

async fn flash_and_redirect(session: &Session, flash: Flash, target: &str) -> Response {
    if let Err(error) = session.insert(FLASH_KEY, flash).await {
        tracing::error!(%error, "the flash message could not be saved");
    }
    Redirect::to(target).into_response()
}

fn sign_in_first() -> Response {
    Redirect::to("/auth/login?returnTo=/requests").into_response()
}

async fn submit(
    State(state): State<AppState>,
    Extension(user): Extension<RequestUser>,
    session: Session,
    Form(form): Form<RequestForm>,
) -> Response {
    let Some(user) = user.0 else {
        return sign_in_first();
    };
    let back = format!(
        "/requests/new?role={}",
        app::url::encode_query_value(&form.role)
    );
    let values = [
        ("duration", &form.duration),
        ("starts_at", &form.starts_at),
        ("justification", &form.justification),
        ("ticket", &form.ticket),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.clone()))
    .collect();
    let catalog = state.catalog();
    let Some(role) = catalog
        .find(&form.role)
        .filter(|role| may_request(role, &user))
    else {
        let flash = Flash {
            error: Some(format!(
                "role `{}` is not in the catalog, or you may not request it",
                form.role
            )),
            ..Flash::default()
        };
        return flash_and_redirect(&session, flash, "/catalog").await;
    };

    let now = now();
    // A pending request past its deadline must not block a new one for the same role.
    if let Err(error) = store::expire_due(&state.database, now).await {
        tracing::warn!(%error, "expiring overdue requests failed");
    }
    let extends = Some(form.extends.trim().to_owned()).filter(|id| !id.is_empty());
    let mut form = form;
    if extends.is_some() {
        // An extension starts when it is approved; a start time does not apply.
        form.starts_at.clear();
    }
    let valid = match validate(&form, role, now) {
        Ok(valid) => valid,
        Err(field_errors) => {
            let flash = Flash {
                error: Some("The request was not sent: correct the fields marked below.".into()),
                values,
                field_errors,
                ..Flash::default()
            };
            return flash_and_redirect(&session, flash, &back).await;
        }
    };
    let auto_approved = role
        .auto_approve
        .as_ref()
        .is_some_and(|audience| audience.contains(&user.groups, &user.realm_roles));
    let request = NewRequest {
        requester: actor(&user),
        role_key: role.key.clone(),
        duration_seconds: valid.duration_seconds,
        starts_at: valid.starts_at,
        justification: valid.justification,
        ticket: valid.ticket,
        approvals_required: role.approvals_required,
        approval_deadline: now + role.approval_timeout.as_secs() as i64,
        auto_approved,
        target: role.grant_target(),
        extends_grant_id: extends.clone(),
    };
    match store::create(&state.database, &request, now).await {
        Ok(id) => {
            tracing::info!(security_event = "request_created", request_id = %id, role = %role.key, subject = %user.subject, auto_approved, extends = extends.as_deref().unwrap_or(""), "access request created");
            if auto_approved {
                state.wake_scheduler();
            }
            if !auto_approved {
                crate::jobs::flag_if_no_approver(&state, &id, role, &user.subject, now).await;
            }
            let message = if auto_approved {
                format!(
                    "Your request for {} was approved automatically.",
                    role.display_name
                )
            } else {
                format!(
                    "Your request for {} is waiting for approval.",
                    role.display_name
                )
            };
            let flash = Flash {
                success: Some(message),
                ..Flash::default()
            };
            flash_and_redirect(&session, flash, "/requests").await
        }
        Err(StoreError::DuplicatePending(role_key)) => {
            let flash = Flash {
                error: Some(format!(
                    "You already have a pending request for {role_key}: wait for its decision or cancel it in My requests."
                )),
                values,
                ..Flash::default()
            };
            flash_and_redirect(&session, flash, &back).await
        }
        Err(error @ (StoreError::OverlappingGrant { .. } | StoreError::NotExtendable(_))) => {
            tracing::info!(%error, role = %role.key, subject = %user.subject, "access request rejected");
            let flash = Flash {
                error: Some(format!("The request was not sent: {error}.")),
                values,
                ..Flash::default()
            };
            flash_and_redirect(&session, flash, &back).await
        }
        Err(error) => {
            tracing::error!(%error, role = %role.key, "storing an access request failed");
            let flash = Flash {
                error: Some("The request could not be saved. Try again; if it keeps failing, tell an administrator.".into()),
                values,
                ..Flash::default()
            };
            flash_and_redirect(&session, flash, &back).await
        }
    }
}

async fn cancel(
    State(state): State<AppState>,
    Extension(user): Extension<RequestUser>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let Some(user) = user.0 else {
        return sign_in_first();
    };
    let flash = match store::cancel(&state.database, &id, &actor(&user), now()).await {
        Ok(()) => {
            tracing::info!(security_event = "request_cancelled", request_id = %id, subject = %user.subject, "access request cancelled");
            Flash {
                success: Some("The request was cancelled.".into()),
                ..Flash::default()
            }
        }
        Err(error) => {
            tracing::warn!(%error, request_id = %id, "cancelling a request failed");
            Flash {
                error: Some(format!("The request was not cancelled: {error}.")),
                ..Flash::default()
            }
        }
    };
    flash_and_redirect(&session, flash, "/requests").await
}

#[derive(Deserialize)]
pub struct DecisionForm {
    decision: String,
    #[serde(default)]
    comment: String,
}

async fn decide(
    State(state): State<AppState>,
    Extension(user): Extension<RequestUser>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Response {
    let Some(user) = user.0 else {
        return sign_in_first();
    };
    let fail = |message: String| Flash {
        error: Some(message),
        ..Flash::default()
    };
    if !user.is(Persona::Approver) {
        tracing::info!(request_id = %id, subject = %user.subject, "decision rejected: missing approver persona");
        return (
            StatusCode::FORBIDDEN,
            "deciding requests needs the approver persona; ask a Keycloak administrator for it",
        )
            .into_response();
    }
    let decision = match form.decision.as_str() {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        other => {
            let flash = fail(format!("Unknown decision `{other}`: use approve or deny."));
            return flash_and_redirect(&session, flash, "/approvals").await;
        }
    };
    let comment = form.comment.trim();
    if comment.chars().count() > MAX_COMMENT
        || comment
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r')
    {
        let flash = fail(format!(
            "The comment must have at most {MAX_COMMENT} characters and no control characters."
        ));
        return flash_and_redirect(&session, flash, "/approvals").await;
    }

    let request = match store::find(&state.database, &id).await {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%error, request_id = %id, "decision on an unknown request");
            return flash_and_redirect(&session, fail(format!("{error}.")), "/approvals").await;
        }
    };
    let catalog = state.catalog();
    let Some(target) = catalog
        .find(&request.role_key)
        .map(|role| role.grant_target())
    else {
        let message = format!(
            "Decision rejected: `{}` is no longer in the catalog; deny requests for it or restore the entry.",
            request.role_key
        );
        return flash_and_redirect(&session, fail(message), "/approvals").await;
    };
    let eligible = match catalog.find(&request.role_key) {
        None => false,
        Some(role) => match state.admin.user_group_paths(&user.subject).await {
            // Group membership as Keycloak has it now, not as the token had it when issued.
            Ok(groups) => role.approvers.contains(&groups, &user.realm_roles),
            Err(error) => {
                tracing::warn!(%error, request_id = %id, "approver's groups could not be read; judging from the token");
                may_approve(role, &user)
            }
        },
    };
    match store::decide(
        &state.database,
        &id,
        &actor(&user),
        eligible,
        decision,
        comment,
        &target,
        now(),
    )
    .await
    {
        Ok(status) => {
            if status == app::server::requests::rules::RequestStatus::Approved {
                state.wake_scheduler();
            }
            tracing::info!(security_event = "request_decided", request_id = %id, approver = %user.subject, decision = decision.as_str(), status = status.as_str(), "access request decided");
            let flash = Flash {
                success: Some(format!(
                    "Recorded your decision ({}); the request is now {}.",
                    decision.as_str(),
                    status.as_str()
                )),
                ..Flash::default()
            };
            flash_and_redirect(&session, flash, "/approvals").await
        }
        Err(error) => {
            tracing::warn!(%error, request_id = %id, approver = %user.subject, "decision rejected");
            let message = match &error {
                StoreError::Database(_) => "The decision could not be saved; try again.".to_owned(),
                other => format!("Decision rejected: {other}."),
            };
            flash_and_redirect(&session, fail(message), "/approvals").await
        }
    }
}

/// Ends the caller's grant now: a grant that has not started is cancelled, an applied one
/// is revoked by the scheduler at once.
async fn end_grant(
    State(state): State<AppState>,
    Extension(user): Extension<RequestUser>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let Some(user) = user.0 else {
        return sign_in_first();
    };
    let flash = match app::server::grants::store::end_early(
        &state.database,
        &id,
        &actor(&user),
        now(),
    )
    .await
    {
        Ok(status) => {
            state.wake_scheduler();
            tracing::info!(security_event = "grant_ended_early", grant_id = %id, subject = %user.subject, status = status.as_str(), "grant ended early by its holder");
            Flash {
                success: Some(
                    "The grant ends now; the role is removed in Keycloak within seconds.".into(),
                ),
                ..Flash::default()
            }
        }
        Err(error) => {
            tracing::warn!(%error, grant_id = %id, subject = %user.subject, "ending a grant early failed");
            let message = match &error {
                StoreError::Database(_) => "The grant could not be ended; try again.".to_owned(),
                other => format!("The grant was not ended: {other}."),
            };
            Flash {
                error: Some(message),
                ..Flash::default()
            }
        }
    };
    flash_and_redirect(&session, flash, "/requests").await
}
