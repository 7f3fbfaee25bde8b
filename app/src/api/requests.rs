//! Server functions behind the catalog, request and approval pages.

use leptos::prelude::*;

use crate::auth::AccessError;
use crate::model::request::{Flash, GrantStatusView, GrantView, RequestView, RoleView};

#[cfg(feature = "ssr")]
mod server_side {
    use std::time::Duration;

    use leptos::prelude::*;

    use crate::auth::AccessError;
    use crate::model::request::{EventView, Flash, GrantView, RequestView, RoleView};
    use crate::model::user::CurrentUser;
    use crate::server::catalog::{current, Catalog, CatalogHandle, CatalogRole};
    use crate::server::db::Database;
    use crate::server::grants::store::{self as grants, Grant, GrantStatus};
    use crate::server::requests::store::{self, StoredRequest};

    /// Session key of the message for the next page after a form post.
    pub const FLASH_KEY: &str = "stint.flash";

    pub fn database() -> Result<Database, AccessError> {
        use_context::<Database>()
            .ok_or_else(|| internal("the database is not in the request context"))
    }

    pub fn catalog() -> Result<std::sync::Arc<Catalog>, AccessError> {
        use_context::<CatalogHandle>()
            .map(|handle| current(&handle))
            .ok_or_else(|| internal("the catalog is not in the request context"))
    }

    pub fn internal(message: &str) -> AccessError {
        tracing::error!(message, "server function failed");
        AccessError::ServerFnError(ServerFnErrorErr::ServerError(
            "internal error; the portal's log has the details".into(),
        ))
    }

    pub fn human(seconds: i64) -> String {
        humantime::format_duration(Duration::from_secs(seconds.max(0) as u64)).to_string()
    }

    pub use crate::server::format_time as timestamp;

    /// Returns whether `user` may request `role`: everyone when the entry names no requesters.
    pub fn may_request(role: &CatalogRole, user: &CurrentUser) -> bool {
        role.requesters
            .as_ref()
            .is_none_or(|audience| audience.contains(&user.groups, &user.realm_roles))
    }

    /// Returns whether `user` may approve requests for `role`, judged from their token.
    pub fn may_approve(role: &CatalogRole, user: &CurrentUser) -> bool {
        role.approvers.contains(&user.groups, &user.realm_roles)
    }

    pub fn role_view(role: &CatalogRole, user: &CurrentUser) -> RoleView {
        let presets = [
            15 * 60,
            30 * 60,
            3600,
            2 * 3600,
            4 * 3600,
            8 * 3600,
            24 * 3600,
        ];
        let max = role.max_duration.as_secs() as i64;
        let mut choices: Vec<i64> = presets
            .into_iter()
            .filter(|seconds| *seconds <= max)
            .collect();
        for limit in [role.default_duration.as_secs() as i64, max] {
            if !choices.contains(&limit) {
                choices.push(limit);
            }
        }
        choices.sort_unstable();
        RoleView {
            key: role.key.clone(),
            display_name: role.display_name.clone(),
            description: role.description.clone(),
            target: role.role.to_string(),
            default_duration: human(role.default_duration.as_secs() as i64),
            max_duration: human(max),
            duration_choices: choices.into_iter().map(human).collect(),
            approvals_required: role.approvals_required,
            approver_groups: role.approvers.groups.clone(),
            justification_required: role.justification_required,
            ticket_required: role.ticket_required,
            ticket_pattern: role
                .ticket_pattern
                .as_ref()
                .map(|pattern| pattern.as_str().to_owned()),
            auto_approved: role
                .auto_approve
                .as_ref()
                .is_some_and(|audience| audience.contains(&user.groups, &user.realm_roles)),
        }
    }

    pub async fn request_view(
        database: &Database,
        catalog: &Catalog,
        request: StoredRequest,
    ) -> Result<RequestView, AccessError> {
        let events = store::audit_trail(database, &request.id)
            .await
            .map_err(|error| internal(&error.to_string()))?
            .into_iter()
            .map(|event| EventView {
                at: timestamp(event.occurred_at),
                actor: event.actor_username.unwrap_or_else(|| "Stint".into()),
                action: event.action.replace('_', " "),
                comment: event.comment,
            })
            .collect();
        let grant = grants::for_request(database, &request.id)
            .await
            .map_err(|error| internal(&error.to_string()))?
            .map(|grant| grant_view(grant, now()));
        let role_name = catalog
            .find(&request.role_key)
            .map(|role| role.display_name.clone())
            .unwrap_or_else(|| request.role_key.clone());
        Ok(RequestView {
            id: request.id,
            role_name,
            role_key: request.role_key,
            requester: request.requester_username,
            duration: human(request.duration_seconds),
            starts: request
                .starts_at
                .map(timestamp)
                .unwrap_or_else(|| "when approved".into()),
            justification: request.justification,
            ticket: request.ticket.unwrap_or_default(),
            status: request.status,
            created: timestamp(request.created_at),
            approvals: request.approvals.max(0) as u32,
            approvals_required: request.approvals_required.max(1) as u32,
            events,
            requester_roles: Vec::new(),
            extends_grant_id: request.extends_grant_id,
            grant,
        })
    }

    pub fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    pub fn grant_view(grant: Grant, now: i64) -> GrantView {
        let status = grant.status();
        let open = status.is_open();
        GrantView {
            can_end: matches!(
                status,
                GrantStatus::Scheduled | GrantStatus::Applying | GrantStatus::Active
            ) && grant.ends_at > now,
            can_extend: matches!(status, GrantStatus::Applying | GrantStatus::Active)
                && grant.ends_at > now,
            id: grant.id,
            request_id: grant.request_id,
            username: grant.username,
            role_key: grant.role_key,
            status: grant.status,
            starts: timestamp(grant.starts_at),
            ends: timestamp(grant.ends_at),
            outcome: grant.outcome.unwrap_or_default(),
            last_error: if open {
                grant.last_error.unwrap_or_default()
            } else {
                String::new()
            },
            attempts: u32::try_from(grant.attempts).unwrap_or(u32::MAX),
            next_attempt: if open {
                timestamp(grant.due_at)
            } else {
                String::new()
            },
            preexisting: grant.preexisting != 0,
            still_effective: grant.still_effective != 0,
            tokens_expire_by: grant.tokens_expire_by.map(timestamp).unwrap_or_default(),
        }
    }

    /// Takes the flash message out of the session, so it shows once.
    pub async fn take_flash() -> Flash {
        let session = use_context::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<tower_sessions::Session>().cloned());
        let Some(session) = session else {
            return Flash::default();
        };
        match session.remove::<Flash>(FLASH_KEY).await {
            Ok(flash) => flash.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, "the flash message could not be read from the session");
                Flash::default()
            }
        }
    }
}

#[cfg(feature = "ssr")]
pub use server_side::{
    database, internal, may_approve, may_request, now, take_flash, timestamp, FLASH_KEY,
};

/// Lists the roles the caller may request whose name, key or description contains `query`.
#[server(endpoint = "catalog")]
pub async fn list_catalog(query: String) -> Result<Vec<RoleView>, AccessError> {
    use crate::model::user::Persona;
    let user = crate::auth::require(Persona::Requester)?;
    let catalog = server_side::catalog()?;
    let needle = query.trim().to_lowercase();
    Ok(catalog
        .roles
        .iter()
        .filter(|role| server_side::may_request(role, &user))
        .filter(|role| {
            needle.is_empty()
                || role.key.contains(&needle)
                || role.display_name.to_lowercase().contains(&needle)
                || role.description.to_lowercase().contains(&needle)
        })
        .map(|role| server_side::role_view(role, &user))
        .collect())
}

/// Returns the form's role, the caller's open grant of it (a new request then extends
/// it), and the outcome of the last submit, if any.
#[server(endpoint = "request_form")]
pub async fn request_form(
    role: String,
) -> Result<(Option<RoleView>, Option<GrantView>, Flash), AccessError> {
    use crate::model::user::Persona;
    let user = crate::auth::require(Persona::Requester)?;
    let catalog = server_side::catalog()?;
    let database = server_side::database()?;
    let view = catalog
        .find(&role)
        .filter(|entry| server_side::may_request(entry, &user))
        .map(|entry| server_side::role_view(entry, &user));
    let grant = match &view {
        Some(view) => {
            crate::server::grants::store::open_grant_of(&database, &user.subject, &view.key)
                .await
                .map_err(|error| server_side::internal(&error.to_string()))?
                .map(|grant| server_side::grant_view(grant, server_side::now()))
        }
        None => None,
    };
    Ok((view, grant, server_side::take_flash().await))
}

/// Returns the caller's requests, newest first, and the outcome of the last form post.
#[server(endpoint = "my_requests")]
pub async fn my_requests() -> Result<(Vec<RequestView>, Flash), AccessError> {
    use crate::model::user::Persona;
    let user = crate::auth::require(Persona::Requester)?;
    let database = server_side::database()?;
    let catalog = server_side::catalog()?;
    let stored = crate::server::requests::store::list_for_requester(&database, &user.subject)
        .await
        .map_err(|error| server_side::internal(&error.to_string()))?;
    let mut views = Vec::with_capacity(stored.len());
    for request in stored {
        views.push(server_side::request_view(&database, &catalog, request).await?);
    }
    Ok((views, server_side::take_flash().await))
}

/// Returns the pending requests the caller may decide, oldest first, without their own.
#[server(endpoint = "approval_queue")]
pub async fn approval_queue() -> Result<(Vec<RequestView>, Flash), AccessError> {
    use crate::model::user::Persona;
    let user = crate::auth::require(Persona::Approver)?;
    let database = server_side::database()?;
    let catalog = server_side::catalog()?;
    let pending = crate::server::requests::store::list_pending(&database)
        .await
        .map_err(|error| server_side::internal(&error.to_string()))?;
    let mut views = Vec::new();
    for request in pending {
        let Some(role) = catalog.find(&request.role_key) else {
            continue;
        };
        if request.requester_subject == user.subject || !server_side::may_approve(role, &user) {
            continue;
        }
        let requester = request.requester_subject.clone();
        let mut view = server_side::request_view(&database, &catalog, request).await?;
        view.requester_roles = match use_context::<
            std::sync::Arc<crate::server::keycloak::KeycloakAdmin>,
        >() {
            Some(admin) => match admin.effective_realm_roles(&requester).await {
                Ok(roles) => roles,
                Err(error) => {
                    tracing::warn!(%error, request_id = %view.id, "the requester's current roles could not be read");
                    vec!["(could not be read from Keycloak)".into()]
                }
            },
            None => Vec::new(),
        };
        views.push(view);
    }
    Ok((views, server_side::take_flash().await))
}

/// Returns the pending requests that need an administrator, with the reason for each.
#[server(endpoint = "flagged_requests")]
pub async fn flagged_requests() -> Result<Vec<(RequestView, String)>, AccessError> {
    use crate::model::user::Persona;
    crate::auth::require(Persona::Admin)?;
    let database = server_side::database()?;
    let catalog = server_side::catalog()?;
    let flagged = crate::server::requests::store::list_flagged(&database)
        .await
        .map_err(|error| server_side::internal(&error.to_string()))?;
    let mut views = Vec::with_capacity(flagged.len());
    for (request, reason) in flagged {
        views.push((
            server_side::request_view(&database, &catalog, request).await?,
            reason,
        ));
    }
    Ok(views)
}

/// Returns the scheduler's view for admins: upcoming starts and ends, grants that failed or
/// keep failing, and the reconciliation's open findings.
#[server(endpoint = "grant_status")]
pub async fn grant_status() -> Result<GrantStatusView, AccessError> {
    use crate::model::request::FindingView;
    use crate::model::user::Persona;
    use crate::server::grants::store::{self as grants, GrantStatus};
    crate::auth::require(Persona::Admin)?;
    let database = server_side::database()?;
    let now = server_side::now();
    let fail = |error: crate::server::requests::store::StoreError| {
        server_side::internal(&error.to_string())
    };
    let views = |list: Vec<grants::Grant>| -> Vec<GrantView> {
        list.into_iter()
            .map(|grant| server_side::grant_view(grant, now))
            .collect()
    };
    let upcoming_starts = grants::list_by_status(&database, &[GrantStatus::Scheduled], 50)
        .await
        .map_err(fail)?;
    let upcoming_ends = grants::list_by_status(
        &database,
        &[
            GrantStatus::Applying,
            GrantStatus::Active,
            GrantStatus::Revoking,
        ],
        50,
    )
    .await
    .map_err(fail)?;
    let attention = grants::list_needing_attention(&database, 50)
        .await
        .map_err(fail)?;
    let findings = crate::server::grants::reconcile::list_findings(&database, 100)
        .await
        .map_err(fail)?
        .into_iter()
        .map(|finding| FindingView {
            kind: finding.kind,
            username: finding.username,
            role_key: finding.role_key,
            detail: finding.detail,
            first_seen: server_side::timestamp(finding.first_seen),
            last_seen: server_side::timestamp(finding.last_seen),
        })
        .collect();
    Ok(GrantStatusView {
        upcoming_starts: views(upcoming_starts),
        upcoming_ends: views(upcoming_ends),
        attention: views(attention),
        findings,
    })
}
