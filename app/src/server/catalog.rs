//! The catalog of requestable roles: a TOML policy file, checked when it is loaded.
//!
//! Loading has two steps. [`Catalog::parse`] checks the file on its own (syntax, unknown
//! keys, limits that contradict each other). [`Catalog::verify`] then checks every name the
//! file uses against Keycloak: roles, clients and groups must exist. Each failure names the
//! catalog entry, so an operator can fix it without guessing.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

/// Maximum grant any entry may allow: past that, access is no longer temporary.
pub const MAX_GRANT: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    role: Vec<RoleEntry>,
}

/// One requestable role as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    key: String,
    realm_role: Option<String>,
    client: Option<String>,
    client_role: Option<String>,
    display_name: String,
    #[serde(default)]
    description: String,
    default_duration: String,
    max_duration: String,
    #[serde(default)]
    requesters: Option<Audience>,
    approvers: Audience,
    #[serde(default = "one")]
    approvals_required: u32,
    #[serde(default = "yes")]
    justification_required: bool,
    #[serde(default)]
    ticket_required: bool,
    ticket_pattern: Option<String>,
    #[serde(default = "default_approval_timeout")]
    approval_timeout: String,
    #[serde(default)]
    auto_approve: Option<Audience>,
    #[serde(default)]
    end_sessions: bool,
    #[serde(default)]
    jit_only: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

fn default_approval_timeout() -> String {
    "24h".into()
}

/// People described by Keycloak groups and roles: anyone who matches one entry belongs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// Full group paths such as `/db-approvers`.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub realm_roles: Vec<String>,
}

impl Audience {
    fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.realm_roles.is_empty()
    }

    /// Returns whether someone with `groups` and `realm_roles` belongs to this audience.
    pub fn contains(&self, groups: &[String], realm_roles: &[String]) -> bool {
        self.groups.iter().any(|group| groups.contains(group))
            || self
                .realm_roles
                .iter()
                .any(|role| realm_roles.contains(role))
    }
}

/// The Keycloak role a catalog entry grants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeycloakRole {
    Realm(String),
    /// A role of the client whose `clientId` is the first field.
    Client(String, String),
}

impl std::fmt::Display for KeycloakRole {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Realm(name) => write!(formatter, "realm role {name}"),
            Self::Client(client, name) => write!(formatter, "client role {client}/{name}"),
        }
    }
}

/// A requestable role after its entry passed every check.
#[derive(Clone, Debug)]
pub struct CatalogRole {
    pub key: String,
    pub role: KeycloakRole,
    pub display_name: String,
    pub description: String,
    pub default_duration: Duration,
    pub max_duration: Duration,
    /// `None`: everyone may request it.
    pub requesters: Option<Audience>,
    pub approvers: Audience,
    pub approvals_required: u32,
    pub justification_required: bool,
    pub ticket_required: bool,
    pub ticket_pattern: Option<regex::Regex>,
    pub approval_timeout: Duration,
    pub auto_approve: Option<Audience>,
    /// End the user's Keycloak sessions when a grant of this role ends, so that tokens
    /// already issued are not refreshed.
    pub end_sessions: bool,
    /// Only grants may hold this role: the reconciliation removes any other mapping of it.
    pub jit_only: bool,
}

impl CatalogRole {
    /// Returns the Keycloak role that a grant of this entry maps.
    pub fn grant_target(&self) -> crate::server::grants::store::GrantTarget {
        let (client_id, role_name) = match &self.role {
            KeycloakRole::Realm(name) => (None, name.clone()),
            KeycloakRole::Client(client, name) => (Some(client.clone()), name.clone()),
        };
        crate::server::grants::store::GrantTarget {
            client_id,
            role_name,
            end_sessions: self.end_sessions,
        }
    }
}

/// The requestable roles, in file order.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub roles: Vec<CatalogRole>,
}

/// Every problem found in a catalog file, one line each.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid catalog {source_name}:\n  {}", problems.join("\n  "))]
pub struct CatalogError {
    pub source_name: String,
    pub problems: Vec<String>,
}

/// Looks names up in Keycloak, so the catalog can be checked against the real realm.
#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    async fn role_exists(&self, role: &KeycloakRole) -> Result<bool, String>;
    async fn group_exists(&self, path: &str) -> Result<bool, String>;
}

fn parse_duration(entry: &str, field: &str, text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| {
        format!("role `{entry}`: {field} `{text}` is not a duration ({error}); write it like 30m, 4h or 2d")
    })?;
    if duration.is_zero() {
        return Err(format!("role `{entry}`: {field} must be longer than zero"));
    }
    if duration.as_secs() == 0 || duration.subsec_nanos() != 0 {
        return Err(format!(
            "role `{entry}`: {field} `{text}` is not a whole number of seconds; write it like 90s, 30m or 4h"
        ));
    }
    Ok(duration)
}

fn human(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

impl Catalog {
    /// Parses and checks `text`; `source_name` (usually the file path) labels the errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, CatalogError> {
        let fail = |problems: Vec<String>| CatalogError {
            source_name: source_name.to_owned(),
            problems,
        };
        let file: CatalogFile =
            toml::from_str(text).map_err(|error| fail(vec![one_line(&error.to_string())]))?;

        let mut problems = Vec::new();
        let mut roles = Vec::new();
        let mut keys = HashSet::new();
        let mut granted = HashSet::new();
        for entry in file.role {
            match check_entry(entry) {
                Ok(role) => {
                    if !keys.insert(role.key.clone()) {
                        problems.push(format!("role `{}`: the key is used twice", role.key));
                    }
                    if !granted.insert(role.role.clone()) {
                        problems.push(format!(
                            "role `{}`: {} is already listed under another key",
                            role.key, role.role
                        ));
                    }
                    roles.push(role);
                }
                Err(mut entry_problems) => problems.append(&mut entry_problems),
            }
        }
        if problems.is_empty() {
            Ok(Self { roles })
        } else {
            Err(fail(problems))
        }
    }

    /// Checks every role and group that the catalog names against `directory`.
    ///
    /// A name that Keycloak reports missing fails the check. A lookup that could not be made
    /// (Keycloak down, say) does not, so the portal can start while Keycloak restarts. Those
    /// failures are returned for the caller to log.
    pub async fn verify(
        &self,
        directory: &dyn Directory,
        source_name: &str,
    ) -> Result<Vec<String>, CatalogError> {
        let mut problems = Vec::new();
        let mut lookup_failures = Vec::new();
        for role in &self.roles {
            match directory.role_exists(&role.role).await {
                Ok(true) => {}
                Ok(false) => problems.push(format!(
                    "role `{}`: {} does not exist in Keycloak; create it or fix the name",
                    role.key, role.role
                )),
                Err(error) => lookup_failures.push(format!(
                    "role `{}`: could not look up {}: {error}",
                    role.key, role.role
                )),
            }
            let audiences = [
                ("approvers", Some(&role.approvers)),
                ("requesters", role.requesters.as_ref()),
                ("auto_approve", role.auto_approve.as_ref()),
            ];
            for (field, audience) in audiences {
                let Some(audience) = audience else { continue };
                for group in &audience.groups {
                    match directory.group_exists(group).await {
                        Ok(true) => {}
                        Ok(false) => problems.push(format!(
                            "role `{}`: {field} group `{group}` does not exist in Keycloak",
                            role.key
                        )),
                        Err(error) => lookup_failures.push(format!(
                            "role `{}`: could not look up {field} group `{group}`: {error}",
                            role.key
                        )),
                    }
                }
                for realm_role in &audience.realm_roles {
                    let lookup = KeycloakRole::Realm(realm_role.clone());
                    match directory.role_exists(&lookup).await {
                        Ok(true) => {}
                        Ok(false) => problems.push(format!(
                            "role `{}`: {field} realm role `{realm_role}` does not exist in Keycloak",
                            role.key
                        )),
                        Err(error) => lookup_failures.push(format!(
                            "role `{}`: could not look up {field} realm role `{realm_role}`: {error}",
                            role.key
                        )),
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(lookup_failures)
        } else {
            problems.append(&mut lookup_failures);
            Err(CatalogError {
                source_name: source_name.to_owned(),
                problems,
            })
        }
    }

    /// Reads, parses and verifies the catalog file at `path`. Returns the catalog and the
    /// lookups that could not be made.
    pub async fn load(
        path: &std::path::Path,
        directory: &dyn Directory,
    ) -> Result<(Self, Vec<String>), CatalogError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| CatalogError {
            source_name: source_name.clone(),
            problems: vec![format!(
                "could not read the file: {error}; set `catalog` to the policy file of requestable roles"
            )],
        })?;
        let catalog = Self::parse(&text, &source_name)?;
        let warnings = catalog.verify(directory, &source_name).await?;
        Ok((catalog, warnings))
    }

    pub fn find(&self, key: &str) -> Option<&CatalogRole> {
        self.roles.iter().find(|role| role.key == key)
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_entry(entry: RoleEntry) -> Result<CatalogRole, Vec<String>> {
    let key = entry.key.clone();
    let mut problems = Vec::new();
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !key_ok {
        problems.push(format!(
            "role `{key}`: the key may contain only a-z, 0-9 and -, and must not be empty"
        ));
    }

    let role = match (&entry.realm_role, &entry.client, &entry.client_role) {
        (Some(name), None, None) if !name.is_empty() => Some(KeycloakRole::Realm(name.clone())),
        (None, Some(client), Some(name)) if !client.is_empty() && !name.is_empty() => {
            Some(KeycloakRole::Client(client.clone(), name.clone()))
        }
        _ => {
            problems.push(format!(
                "role `{key}`: set either realm_role, or both client and client_role"
            ));
            None
        }
    };

    let durations = (
        parse_duration(&key, "default_duration", &entry.default_duration),
        parse_duration(&key, "max_duration", &entry.max_duration),
        parse_duration(&key, "approval_timeout", &entry.approval_timeout),
    );
    if let (Ok(default), Ok(max)) = (&durations.0, &durations.1) {
        if max < default {
            problems.push(format!(
                "role `{key}`: max_duration {} is below default_duration {}",
                human(*max),
                human(*default)
            ));
        }
        if *max > MAX_GRANT {
            problems.push(format!(
                "role `{key}`: max_duration {} exceeds the limit of {}",
                human(*max),
                human(MAX_GRANT)
            ));
        }
    }
    for result in [&durations.0, &durations.1, &durations.2] {
        if let Err(problem) = result {
            problems.push(problem.clone());
        }
    }

    if entry.approvals_required == 0 {
        problems.push(format!(
            "role `{key}`: approvals_required must be at least 1; use auto_approve to skip approval"
        ));
    }
    if entry.approvers.is_empty() {
        problems.push(format!(
            "role `{key}`: approvers lists no group or role, so nobody could approve a request"
        ));
    }
    if entry.display_name.trim().is_empty() {
        problems.push(format!("role `{key}`: display_name is empty"));
    }

    let ticket_pattern = match entry.ticket_pattern.as_deref() {
        None => None,
        Some(pattern) => match regex::Regex::new(pattern) {
            Ok(regex) => Some(regex),
            Err(error) => {
                problems.push(format!(
                    "role `{key}`: ticket_pattern `{pattern}` is not a valid regular expression: {}",
                    one_line(&error.to_string())
                ));
                None
            }
        },
    };

    match (role, durations, problems.is_empty()) {
        (Some(role), (Ok(default_duration), Ok(max_duration), Ok(approval_timeout)), true) => {
            Ok(CatalogRole {
                key,
                role,
                display_name: entry.display_name,
                description: entry.description,
                default_duration,
                max_duration,
                requesters: entry.requesters.filter(|audience| !audience.is_empty()),
                approvers: entry.approvers,
                approvals_required: entry.approvals_required,
                justification_required: entry.justification_required,
                ticket_required: entry.ticket_required,
                ticket_pattern,
                approval_timeout,
                auto_approve: entry.auto_approve.filter(|audience| !audience.is_empty()),
                end_sessions: entry.end_sessions,
                jit_only: entry.jit_only,
            })
        }
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests;

/// The catalog in force, shared by request handlers and swapped whole on reload.
pub type CatalogHandle = std::sync::Arc<std::sync::RwLock<std::sync::Arc<Catalog>>>;

/// Returns the catalog in force from `handle`.
pub fn current(handle: &CatalogHandle) -> std::sync::Arc<Catalog> {
    match handle.read() {
        Ok(catalog) => catalog.clone(),
        // A writer panicked while swapping in a new catalog; the old one is still whole.
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}
