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
