//! The Keycloak calls the scheduler and the reconciliation make, behind a trait so that unit
//! tests can run them against an in-memory realm. [`KeycloakAdmin`] is the real one.

use reqwest::StatusCode;

use crate::server::catalog::KeycloakRole;
use crate::server::keycloak::{AdminError, KeycloakAdmin, KeycloakAnswer, RoleRef};

/// The class of a failed Keycloak call, which decides whether the step is retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The user or role no longer exists (404): retrying cannot help.
    Gone(String),
    /// The service account lacks a permission (403): an administrator must fix the realm.
    /// Retried with back-off, so the grant proceeds once the permission is given.
    Configuration(String),
    /// Keycloak is down, timed out or returned 5xx: retried with back-off.
    Transient(String),
}

impl Failure {
    pub fn message(&self) -> String {
        match self {
            Self::Gone(reason) => reason.clone(),
            Self::Configuration(reason) => format!("configuration error: {reason}"),
            Self::Transient(reason) => reason.clone(),
        }
    }
}

impl From<AdminError> for Failure {
    fn from(error: AdminError) -> Self {
        match &error {
            AdminError::Status { status, .. } if *status == StatusCode::NOT_FOUND => {
                Self::Gone(error.to_string())
            }
            AdminError::Forbidden { .. } => Self::Configuration(error.to_string()),
            _ => Self::Transient(error.to_string()),
        }
    }
}

/// The Keycloak calls of the scheduler and the reconciliation. `None` results mean the user (or role) does not exist.
#[async_trait::async_trait]
pub trait RoleMappings: Send + Sync {
    async fn find_role(&self, role: &KeycloakRole) -> Result<Option<RoleRef>, Failure>;
    async fn role_by_id(&self, id: &str) -> Result<Option<RoleRef>, Failure>;
    async fn has_direct_mapping(&self, user: &str, role: &RoleRef)
        -> Result<Option<bool>, Failure>;
    async fn has_effective_role(&self, user: &str, role: &RoleRef)
        -> Result<Option<bool>, Failure>;
    async fn add_mapping(&self, user: &str, role: &RoleRef) -> Result<KeycloakAnswer, Failure>;
    async fn remove_mapping(&self, user: &str, role: &RoleRef) -> Result<KeycloakAnswer, Failure>;
    async fn logout_user(&self, user: &str) -> Result<KeycloakAnswer, Failure>;
    /// Returns the user's group paths and effective realm roles; `None` when the user is gone.
    async fn memberships(&self, user: &str) -> Result<Option<(Vec<String>, Vec<String>)>, Failure>;
    async fn role_holders(&self, role: &RoleRef) -> Result<Vec<(String, String)>, Failure>;
    async fn access_token_lifespan(&self) -> Result<i64, Failure>;
}

#[async_trait::async_trait]
impl RoleMappings for KeycloakAdmin {
    async fn find_role(&self, role: &KeycloakRole) -> Result<Option<RoleRef>, Failure> {
        Ok(KeycloakAdmin::find_role(self, role).await?)
    }

    async fn role_by_id(&self, id: &str) -> Result<Option<RoleRef>, Failure> {
        Ok(KeycloakAdmin::role_by_id(self, id).await?)
    }

    async fn has_direct_mapping(
        &self,
        user: &str,
        role: &RoleRef,
    ) -> Result<Option<bool>, Failure> {
        Ok(KeycloakAdmin::has_direct_mapping(self, user, role).await?)
    }

    async fn has_effective_role(
        &self,
        user: &str,
        role: &RoleRef,
    ) -> Result<Option<bool>, Failure> {
        Ok(KeycloakAdmin::has_effective_role(self, user, role).await?)
    }

    async fn add_mapping(&self, user: &str, role: &RoleRef) -> Result<KeycloakAnswer, Failure> {
        match self.write_mapping(reqwest::Method::POST, user, role).await {
            Ok(answer) => Ok(answer),
            // Two identical POSTs at once can fail on a duplicate key; the mapping is then
            // present, which is what the call wanted.
            Err(AdminError::Status { status, .. }) if status == StatusCode::BAD_REQUEST => {
                match KeycloakAdmin::has_direct_mapping(self, user, role).await? {
                    Some(true) => Ok(KeycloakAnswer(
                        "POST …/role-mappings returned 400; a re-read found the mapping present"
                            .into(),
                    )),
                    _ => Err(Failure::Transient(
                        "POST …/role-mappings returned 400 (Keycloak could not store the \
                         mapping, for example a read-only LDAP mapper)"
                            .into(),
                    )),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn remove_mapping(&self, user: &str, role: &RoleRef) -> Result<KeycloakAnswer, Failure> {
        Ok(self
            .write_mapping(reqwest::Method::DELETE, user, role)
            .await?)
    }

    async fn logout_user(&self, user: &str) -> Result<KeycloakAnswer, Failure> {
        Ok(KeycloakAdmin::logout_user(self, user).await?)
    }

    async fn memberships(&self, user: &str) -> Result<Option<(Vec<String>, Vec<String>)>, Failure> {
        let groups = match self.user_group_paths(user).await {
            Ok(groups) => groups,
            Err(AdminError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                return Ok(None)
            }
            Err(error) => return Err(error.into()),
        };
        let roles = match self.effective_realm_roles(user).await {
            Ok(roles) => roles,
            Err(AdminError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                return Ok(None)
            }
            Err(error) => return Err(error.into()),
        };
        Ok(Some((groups, roles)))
    }

    async fn role_holders(&self, role: &RoleRef) -> Result<Vec<(String, String)>, Failure> {
        Ok(KeycloakAdmin::role_holders(self, role).await?)
    }

    async fn access_token_lifespan(&self) -> Result<i64, Failure> {
        Ok(KeycloakAdmin::access_token_lifespan(self).await?)
    }
}
