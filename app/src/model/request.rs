use serde::{Deserialize, Serialize};

/// A requestable role as the catalog page shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleView {
    pub key: String,
    pub display_name: String,
    pub description: String,
    /// Keycloak role, such as `realm role db-admin`.
    pub target: String,
    pub default_duration: String,
    pub max_duration: String,
    /// Preset durations within the role's limits, for the request form.
    pub duration_choices: Vec<String>,
    pub approvals_required: u32,
    pub approver_groups: Vec<String>,
    pub justification_required: bool,
    pub ticket_required: bool,
    pub ticket_pattern: Option<String>,
    /// Whether the viewer's request would be approved without review.
    pub auto_approved: bool,
}

/// One entry of a request's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub comment: String,
}

/// A request as lists and the approval queue show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    pub id: String,
    pub role_key: String,
    pub role_name: String,
    pub requester: String,
    pub duration: String,
    pub starts: String,
    pub justification: String,
    pub ticket: String,
    pub status: String,
    pub created: String,
    pub approvals: u32,
    pub approvals_required: u32,
    pub events: Vec<EventView>,
    /// The requester's effective realm roles now, for approvers; empty elsewhere.
    pub requester_roles: Vec<String>,
    /// The grant this request is asking to extend.
    pub extends_grant_id: Option<String>,
    /// The grant made from this request, once it is approved.
    pub grant: Option<GrantView>,
}

/// A grant as the request pages and the admin status page show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    pub id: String,
    pub request_id: String,
    pub username: String,
    pub role_key: String,
    pub status: String,
    pub starts: String,
    pub ends: String,
    /// The reason for the grant's final status, or the result at its end.
    pub outcome: String,
    /// The last failed attempt's error while the scheduler retries.
    pub last_error: String,
    pub attempts: u32,
    pub next_attempt: String,
    /// The user held the role directly before the grant.
    pub preexisting: bool,
    /// The role stayed effective through a group or composite role after the revocation.
    pub still_effective: bool,
    /// When every access token issued before the revocation has expired.
    pub tokens_expire_by: String,
    /// The holder may end it now.
    pub can_end: bool,
    /// The holder may ask to extend it.
    pub can_extend: bool,
}

/// A reconciliation finding on the admin status page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingView {
    pub kind: String,
    pub username: String,
    pub role_key: String,
    pub detail: String,
    pub first_seen: String,
    pub last_seen: String,
}

/// The admin status page: what the scheduler will do next and what needs a person.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantStatusView {
    pub upcoming_starts: Vec<GrantView>,
    pub upcoming_ends: Vec<GrantView>,
    pub attention: Vec<GrantView>,
    pub findings: Vec<FindingView>,
}

/// A message for the page that a form post redirects to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flash {
    pub success: Option<String>,
    pub error: Option<String>,
    /// The submitted form values, so a failed submit loses nothing.
    pub values: std::collections::BTreeMap<String, String>,
    pub field_errors: std::collections::BTreeMap<String, String>,
}

/// A grant in the auditor's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditGrantView {
    pub id: String,
    pub request_id: String,
    pub username: String,
    pub role_key: String,
    pub status: String,
    pub starts: String,
    pub ends: String,
    pub applied: String,
    pub revoked: String,
    pub ticket: String,
    pub justification: String,
    pub outcome: String,
    /// `bob approved`, `carol denied`, in the order they decided.
    pub decisions: Vec<String>,
}

/// One bar of the chart of grants active per day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCount {
    /// `2026-12-04`.
    pub day: String,
    pub count: u32,
}

/// The auditor's history page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHistoryView {
    pub grants: Vec<AuditGrantView>,
    /// More grants matched than the page shows.
    pub truncated: bool,
    pub chart: Vec<DayCount>,
    /// The filter as a query string, for the export links.
    pub query: String,
    /// A filter value that could not be read, with the fix.
    pub filter_error: Option<String>,
    pub flash: Flash,
}

/// One grant's full timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTimelineView {
    pub grant: AuditGrantView,
    pub events: Vec<EventView>,
}
