use serde::{Deserialize, Serialize};

/// Role of a signed-in person in the portal. Everyone is a requester; the others add rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Persona {
    Requester,
    Approver,
    Auditor,
    Admin,
}

impl Persona {
    pub fn label(self) -> &'static str {
        match self {
            Self::Requester => "requester",
            Self::Approver => "approver",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }
}

/// The signed-in user as the server computed it from the latest Keycloak tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentUser {
    /// Keycloak's `sub`: the user id, stable across renames.
    pub subject: String,
    pub username: String,
    pub display_name: String,
    pub email: Option<String>,
    /// Full group paths such as `/stint-approvers`.
    pub groups: Vec<String>,
    pub realm_roles: Vec<String>,
    /// Roles of the portal's own Keycloak client.
    pub client_roles: Vec<String>,
    /// Always contains [`Persona::Requester`].
    pub personas: Vec<Persona>,
}

impl CurrentUser {
    pub fn is(&self, persona: Persona) -> bool {
        self.personas.contains(&persona)
    }
}
