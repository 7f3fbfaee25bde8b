//! The auditor's exports and the chain check, as plain HTTP routes: a download and a form
//! post. Only auditors and admins may use them.

use app::api::audit::{history_filter, HistoryQuery};
use app::api::requests::FLASH_KEY;
use app::auth::RequestUser;
use app::model::request::Flash;
use app::model::user::{CurrentUser, Persona};
use app::server::audit::{chain, export};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use time::OffsetDateTime;
use tower_sessions::Session;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/audit/export", get(export_history))
        .route("/audit/verify", post(verify_chain))
}

/// Returns the caller when they are an auditor or an admin, else the response to send.
fn auditor(user: RequestUser) -> Result<CurrentUser, Box<Response>> {
    match user.0 {
        None => Err(Box::new(
            Redirect::to("/auth/login?returnTo=/audit").into_response(),
        )),
        Some(user) if user.is(Persona::Auditor) || user.is(Persona::Admin) => Ok(user),
        Some(_) => Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                "the audit log needs the auditor or admin persona",
            )
                .into_response(),
        )),
    }
}

#[derive(Deserialize)]
pub struct ExportQuery {
    #[serde(default)]
    format: String,
    #[serde(flatten)]
    filter: HistoryQuery,
}

/// Streams the filtered history as CSV or JSON lines. The export is recorded as an audit
/// event first, so the file contains its own record when the range covers now.
async fn export_history(
    State(state): State<AppState>,
    Extension(user): Extension<RequestUser>,
    headers: axum::http::HeaderMap,
    Query(query): Query<ExportQuery>,
) -> Response {
    let user = match auditor(user) {
        Ok(user) => user,
        Err(response) => return *response,
    };
    // A link on another site must not make an auditor's browser start exports, each of
    // which is recorded in the audit log.
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| !matches!(site.as_bytes(), b"same-origin" | b"none"))
    {
        return (
            StatusCode::FORBIDDEN,
            "exports start from the portal's audit page, not from another site",
        )
            .into_response();
    }
    let Some(format) = export::ExportFormat::parse(&query.format) else {
        let message = format!("unknown export format `{}`: use csv or json", query.format);
        return (StatusCode::BAD_REQUEST, message).into_response();
    };
    let filter = match history_filter(&query.filter) {
        Ok(filter) => filter,
        Err(error) => return (StatusCode::BAD_REQUEST, error).into_response(),
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let description = export::describe(&filter, format);
    if let Err(error) = export::record_export(
        &state.database,
        Some((&user.subject, &user.username)),
        &description,
        now,
    )
    .await
    {
        tracing::error!(%error, "recording an export failed, so the export is rejected");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the export could not be recorded; try again",
        )
            .into_response();
    }
    tracing::info!(security_event = "audit_exported", subject = %user.subject, %description, "audit history exported");

    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let database = state.database.clone();
    tokio::spawn(async move {
        match export::write_export(&database, &filter, format, &mut writer).await {
            Ok(summary) => tracing::info!(rows = summary.rows, "export finished"),
            Err(error) => tracing::warn!(%error, "export stopped before its end"),
        }
    });
    let day = export::rfc3339(now)[..10].replace('-', "");
    let extension = match format {
        export::ExportFormat::Csv => "csv",
        export::ExportFormat::Json => "jsonl",
    };
    let disposition = format!("attachment; filename=\"stint-audit-{day}.{extension}\"");
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(reader)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// Checks the whole hash chain and reports the result on the audit page.
async fn verify_chain(
    State(state): State<AppState>,
    Extension(user): Extension<RequestUser>,
    session: Session,
) -> Response {
    let user = match auditor(user) {
        Ok(user) => user,
        Err(response) => return *response,
    };
    let flash = match chain::verify(&state.database).await {
        Ok(report) if report.first_break.is_none() => {
            tracing::info!(subject = %user.subject, checked = report.checked, "audit chain verified");
            Flash {
                success: Some(format!("{report}.")),
                ..Flash::default()
            }
        }
        Ok(report) => {
            tracing::error!(security_event = "audit_chain_broken", subject = %user.subject, %report, "audit chain verification failed");
            Flash {
                error: Some(format!("{report}.")),
                ..Flash::default()
            }
        }
        Err(error) => {
            tracing::error!(%error, "audit chain verification could not read the log");
            Flash {
                error: Some("The audit log could not be read; try again.".into()),
                ..Flash::default()
            }
        }
    };
    if let Err(error) = session.insert(FLASH_KEY, flash).await {
        tracing::error!(%error, "the flash message could not be saved");
    }
    Redirect::to("/audit").into_response()
}
