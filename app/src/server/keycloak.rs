//! Client of Keycloak's Admin REST API (Keycloak 26), authenticated as the portal's
//! service account with the client-credentials grant.
//!
//! The access token is cached until shortly before it expires and fetched again once when
//! Keycloak returns 401. Every path segment is percent-encoded, because role names may
//! contain `/`, `;`, `=` or `+`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::server::catalog::{Directory, KeycloakRole};

/// A cached token is replaced this long before Keycloak's `expires_in` runs out.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("Keycloak request {what} failed: {reason}")]
    Transport { what: String, reason: String },
    #[error(
        "Keycloak rejected the request {what} of client `{client}`'s service account with \
         403: assign that service account the realm-management role {hint}"
    )]
    Forbidden {
        what: String,
        hint: &'static str,
        /// The `clientId` whose service account was refused.
        client: String,
    },
    #[error("Keycloak returned {status} for {what}")]
    Status { what: String, status: StatusCode },
    #[error("the service-account token request failed: {0}")]
    Token(String),
}

struct CachedToken {
    value: String,
    renew_at: Instant,
}

pub struct KeycloakAdmin {
    http: reqwest::Client,
    base_url: String,
    realm: String,
    client_id: String,
    client_secret: String,
    token: Mutex<Option<CachedToken>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ClientRepresentation {
    id: String,
}

/// Percent-encodes one URL path segment.
fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(char::from(byte))
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

impl KeycloakAdmin {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        realm: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            realm: realm.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            token: Mutex::new(None),
        }
    }

    /// Returns the `clientId` of the portal's service account.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    async fn token(&self, renew: bool) -> Result<String, AdminError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            if !renew && Instant::now() < token.renew_at {
                return Ok(token.value.clone());
            }
        }
        let url = format!(
            "{}/realms/{}/protocol/openid-connect/token",
            self.base_url,
            segment(&self.realm)
        );
        let response = self
            .http
            .post(&url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
            ])
            .send()
            .await
            .map_err(|error| AdminError::Token(error.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(AdminError::Token(format!(
                "the token endpoint of realm `{}` returned {}: check keycloak.client_id, the \
                 client secret and that the client has service accounts enabled",
                self.realm,
                response.status()
            )));
        }
        let token: TokenResponse = response
            .json()
            .await
            .map_err(|error| AdminError::Token(error.to_string()))?;
        let lifetime = Duration::from_secs(token.expires_in).saturating_sub(TOKEN_MARGIN);
        *cached = Some(CachedToken {
            value: token.access_token.clone(),
            renew_at: Instant::now() + lifetime,
        });
        Ok(token.access_token)
    }

    /// Sends `GET {admin}/realms/{realm}/{segments…}` and returns the response; a 401 fetches
    /// a new token and retries once.
    async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, AdminError> {
        self.send(reqwest::Method::GET, segments, query, None).await
    }

    /// Sends `method {admin}/realms/{realm}/{segments…}` with an optional JSON body and returns
    /// the response; a 401 fetches a new token and retries once.
    async fn send(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, AdminError> {
        let path: Vec<String> = segments.iter().map(|part| segment(part)).collect();
        let url = format!(
            "{}/admin/realms/{}/{}",
            self.base_url,
            segment(&self.realm),
            path.join("/")
        );
        let url = url.trim_end_matches('/').to_owned();
        // The host stays out of messages: they reach the grant's holder and the audit log.
        let what = format!("{method} …/{}", path.join("/"));
        let mut renew = false;
        loop {
            let token = self.token(renew).await?;
            let mut builder = self.http.request(method.clone(), &url).bearer_auth(token);
            // An empty list would still end the URL with `?`.
            if !query.is_empty() {
                builder = builder.query(query);
            }
            if let Some(body) = body {
                builder = builder.json(body);
            }
            let response = builder
                .send()
                .await
                .map_err(|error| AdminError::Transport {
                    what: what.clone(),
                    reason: error.without_url().to_string(),
                })?;
            if response.status() == StatusCode::UNAUTHORIZED && !renew {
                tracing::info!(%url, "Keycloak returned 401; fetching a new service-account token");
                renew = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// Returns whether `GET segments` finds the object: 200 is yes, 404 is no.
    async fn exists(&self, segments: &[&str], hint: &'static str) -> Result<bool, AdminError> {
        let response = self.get(segments, &[]).await?;
        let what = || format!("GET …/{}", segments.join("/"));
        match response.status() {
            status if status.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::FORBIDDEN => Err(AdminError::Forbidden {
                what: what(),
                hint,
                client: self.client_id.clone(),
            }),
            status => Err(AdminError::Status {
                what: what(),
                status,
            }),
        }
    }

    /// Returns the internal id of the client whose `clientId` is `client_id`.
    pub async fn client_uuid(&self, client_id: &str) -> Result<Option<String>, AdminError> {
        let response = self
            .get(
                &["clients"],
                &[("clientId", client_id), ("search", "false")],
            )
            .await?;
        let clients: Vec<ClientRepresentation> = require_found(
            self.read_json(response, "GET …/clients", "view-clients")
                .await?,
            "GET …/clients",
        )?;
        Ok(clients.into_iter().next().map(|client| client.id))
    }
}

impl KeycloakAdmin {
    /// Decodes the JSON body of a successful response, or returns `None` for a 404. Any other
    /// status becomes an error; a 403 names the realm-management role in `hint`.
    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
        what: &str,
        hint: &'static str,
    ) -> Result<Option<T>, AdminError> {
        match response.status() {
            status if status.is_success() => {
                response
                    .json()
                    .await
                    .map(Some)
                    .map_err(|error| AdminError::Transport {
                        what: what.to_owned(),
                        reason: error.to_string(),
                    })
            }
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::FORBIDDEN => Err(AdminError::Forbidden {
                what: what.to_owned(),
                hint,
                client: self.client_id.clone(),
            }),
            status => Err(AdminError::Status {
                what: what.to_owned(),
                status,
            }),
        }
    }
}

/// Turns a 404 from [`read_json`] into an error, for lists that always exist.
fn require_found<T>(found: Option<T>, what: &str) -> Result<T, AdminError> {
    found.ok_or_else(|| AdminError::Status {
        what: what.to_owned(),
        status: StatusCode::NOT_FOUND,
    })
}

#[derive(Deserialize)]
struct GroupRepresentation {
    path: String,
}

#[derive(Deserialize)]
struct RoleRepresentation {
    name: String,
}

#[derive(Deserialize)]
struct IdRepresentation {
    id: String,
}

impl KeycloakAdmin {
    /// Returns whether the user list at `segments` (group members or role holders) names
    /// anyone other than `except_user_id`. Two entries are read, which is enough to tell.
    async fn has_other_member(
        &self,
        segments: &[&str],
        except_user_id: &str,
        hint: &'static str,
    ) -> Result<bool, AdminError> {
        let what = format!("GET …/{}", segments.join("/"));
        let query = [
            ("first", "0"),
            ("max", "2"),
            ("briefRepresentation", "true"),
        ];
        let response = self.get(segments, &query).await?;
        let members: Option<Vec<IdRepresentation>> = self.read_json(response, &what, hint).await?;
        Ok(members
            .unwrap_or_default()
            .iter()
            .any(|member| member.id != except_user_id))
    }

    /// Returns whether group `path` has a direct member other than `except_user_id`.
    pub async fn group_has_other_member(
        &self,
        path: &str,
        except_user_id: &str,
    ) -> Result<bool, AdminError> {
        let mut segments = vec!["group-by-path"];
        segments.extend(path.split('/').filter(|part| !part.is_empty()));
        let response = self.get(&segments, &[]).await?;
        let what = format!("GET …/group-by-path{path}");
        let group: Option<IdRepresentation> =
            self.read_json(response, &what, "query-groups").await?;
        let Some(group) = group else {
            return Ok(false);
        };
        self.has_other_member(
            &["groups", &group.id, "members"],
            except_user_id,
            "view-users",
        )
        .await
    }

    /// Returns whether realm role `role` is mapped directly to a user other than `except_user_id`.
    pub async fn realm_role_has_other_holder(
        &self,
        role: &str,
        except_user_id: &str,
    ) -> Result<bool, AdminError> {
        self.has_other_member(&["roles", role, "users"], except_user_id, "view-users")
            .await
    }

    /// Returns the names of the realm roles user `user_id` holds, directly, through groups
    /// or through composite roles (`role-mappings/realm/composite`), sorted.
    pub async fn effective_realm_roles(&self, user_id: &str) -> Result<Vec<String>, AdminError> {
        let what = "GET …/users/{id}/role-mappings/realm/composite";
        let response = self
            .get(
                &["users", user_id, "role-mappings", "realm", "composite"],
                &[],
            )
            .await?;
        let roles: Vec<RoleRepresentation> =
            require_found(self.read_json(response, what, "view-users").await?, what)?;
        let mut names: Vec<String> = roles.into_iter().map(|role| role.name).collect();
        names.sort();
        Ok(names)
    }

    /// Returns the full paths of the groups user `user_id` is a direct member of, reading
    /// every page.
    pub async fn user_group_paths(&self, user_id: &str) -> Result<Vec<String>, AdminError> {
        const PAGE: usize = 100;
        let what = "GET …/users/{id}/groups";
        let mut paths = Vec::new();
        loop {
            let first = paths.len().to_string();
            let max = PAGE.to_string();
            let query = [
                ("first", first.as_str()),
                ("max", max.as_str()),
                ("briefRepresentation", "true"),
            ];
            let response = self.get(&["users", user_id, "groups"], &query).await?;
            let page: Vec<GroupRepresentation> =
                require_found(self.read_json(response, what, "view-users").await?, what)?;
            let short = page.len() < PAGE;
            paths.extend(page.into_iter().map(|group| group.path));
            if short {
                return Ok(paths);
            }
        }
    }
}

/// A Keycloak role as the Admin API returns it: its id and name, and the internal id of its
/// client for a client role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRef {
    pub id: String,
    pub name: String,
    /// `None` for a realm role.
    pub client_uuid: Option<String>,
}

#[derive(Deserialize)]
struct FullRoleRepresentation {
    id: String,
    name: String,
    #[serde(default, rename = "clientRole")]
    client_role: bool,
    #[serde(default, rename = "containerId")]
    container_id: Option<String>,
}

impl FullRoleRepresentation {
    fn into_ref(self) -> RoleRef {
        RoleRef {
            client_uuid: self.client_role.then_some(self.container_id).flatten(),
            id: self.id,
            name: self.name,
        }
    }
}

#[derive(Deserialize)]
struct UserRepresentation {
    id: String,
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
struct RealmRepresentation {
    #[serde(default, rename = "accessTokenLifespan")]
    access_token_lifespan: Option<i64>,
}

/// The response to a role-mapping write: the method, path and status, as the audit log
/// records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeycloakAnswer(pub String);

impl KeycloakAdmin {
    /// Path of `user_id`'s direct mappings for the realm or for `role`'s client.
    fn mapping_path<'a>(user_id: &'a str, role: &'a RoleRef) -> Vec<&'a str> {
        match &role.client_uuid {
            None => vec!["users", user_id, "role-mappings", "realm"],
            Some(client) => vec!["users", user_id, "role-mappings", "clients", client],
        }
    }

    /// Looks up `role` by name. `None` when the role (or its client) does not exist.
    pub async fn find_role(&self, role: &KeycloakRole) -> Result<Option<RoleRef>, AdminError> {
        let (segments, hint): (Vec<String>, &'static str) = match role {
            KeycloakRole::Realm(name) => (vec!["roles".into(), name.clone()], "view-realm"),
            KeycloakRole::Client(client, name) => match self.client_uuid(client).await? {
                Some(uuid) => (
                    vec!["clients".into(), uuid, "roles".into(), name.clone()],
                    "view-clients",
                ),
                None => return Ok(None),
            },
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let what = format!("GET …/{}", segments.join("/"));
        let response = self.get(&segments, &[]).await?;
        let found: Option<FullRoleRepresentation> = self.read_json(response, &what, hint).await?;
        Ok(found.map(FullRoleRepresentation::into_ref))
    }

    /// Reads role `id` again, so a write uses the role's current name. `None` once the role
    /// has been deleted.
    pub async fn role_by_id(&self, id: &str) -> Result<Option<RoleRef>, AdminError> {
        let response = self.get(&["roles-by-id", id], &[]).await?;
        let found: Option<FullRoleRepresentation> = self
            .read_json(response, "GET …/roles-by-id/{id}", "view-realm")
            .await?;
        Ok(found.map(FullRoleRepresentation::into_ref))
    }

    /// Returns whether user `user_id` has `role` mapped directly (not through a group or a
    /// composite role). `None` when the user does not exist.
    pub async fn has_direct_mapping(
        &self,
        user_id: &str,
        role: &RoleRef,
    ) -> Result<Option<bool>, AdminError> {
        let segments = Self::mapping_path(user_id, role);
        let response = self.get(&segments, &[]).await?;
        let roles: Option<Vec<IdRepresentation>> = self
            .read_json(response, "GET …/users/{id}/role-mappings", "view-users")
            .await?;
        Ok(roles.map(|roles| roles.iter().any(|mapped| mapped.id == role.id)))
    }

    /// Returns whether `role` is effective for `user_id` in any way: directly, through a
    /// group, or inside a composite role. `None` when the user does not exist.
    pub async fn has_effective_role(
        &self,
        user_id: &str,
        role: &RoleRef,
    ) -> Result<Option<bool>, AdminError> {
        let mut segments = Self::mapping_path(user_id, role);
        segments.push("composite");
        let response = self.get(&segments, &[]).await?;
        let roles: Option<Vec<IdRepresentation>> = self
            .read_json(response, "GET …/role-mappings/…/composite", "view-users")
            .await?;
        Ok(roles.map(|roles| roles.iter().any(|mapped| mapped.id == role.id)))
    }

    /// Adds (`POST`) or removes (`DELETE`) the direct mapping of `role` to `user_id`. The body
    /// is always a one-element array: Keycloak reads a missing DELETE body as "remove every
    /// mapping". Returns Keycloak's response. A 404 means the user or role no longer exists.
    pub async fn write_mapping(
        &self,
        method: reqwest::Method,
        user_id: &str,
        role: &RoleRef,
    ) -> Result<KeycloakAnswer, AdminError> {
        let segments = Self::mapping_path(user_id, role);
        let body = serde_json::json!([{ "id": role.id, "name": role.name }]);
        let what = format!("{method} …/users/{{id}}/role-mappings");
        let response = self.send(method, &segments, &[], Some(&body)).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(KeycloakAnswer(format!("{what} returned {status}")));
        }
        if status == StatusCode::FORBIDDEN {
            return Err(AdminError::Forbidden {
                what,
                hint: "manage-users",
                client: self.client_id.clone(),
            });
        }
        Err(AdminError::Status { what, status })
    }

    /// Ends every Keycloak session of `user_id` (`POST /users/{id}/logout`).
    pub async fn logout_user(&self, user_id: &str) -> Result<KeycloakAnswer, AdminError> {
        let what = "POST …/users/{id}/logout".to_owned();
        let response = self
            .send(
                reqwest::Method::POST,
                &["users", user_id, "logout"],
                &[],
                None,
            )
            .await?;
        let status = response.status();
        match status {
            status if status.is_success() => {
                Ok(KeycloakAnswer(format!("{what} returned {status}")))
            }
            StatusCode::FORBIDDEN => Err(AdminError::Forbidden {
                what,
                hint: "manage-users",
                client: self.client_id.clone(),
            }),
            status => Err(AdminError::Status { what, status }),
        }
    }

    /// Returns the users that have `role` mapped directly, as (id, username), reading every
    /// page.
    pub async fn role_holders(&self, role: &RoleRef) -> Result<Vec<(String, String)>, AdminError> {
        const PAGE: usize = 100;
        let base: Vec<&str> = match &role.client_uuid {
            None => vec!["roles", &role.name, "users"],
            Some(client) => vec!["clients", client, "roles", &role.name, "users"],
        };
        let what = "GET …/roles/{name}/users";
        let mut holders = Vec::new();
        loop {
            let first = holders.len().to_string();
            let max = PAGE.to_string();
            let query = [
                ("first", first.as_str()),
                ("max", max.as_str()),
                ("briefRepresentation", "true"),
            ];
            let response = self.get(&base, &query).await?;
            let page: Vec<UserRepresentation> =
                require_found(self.read_json(response, what, "view-users").await?, what)?;
            let short = page.len() < PAGE;
            holders.extend(page.into_iter().map(|user| (user.id, user.username)));
            if short {
                return Ok(holders);
            }
        }
    }

    /// Returns the realm's access-token lifespan in seconds (300 when the realm sets none).
    pub async fn access_token_lifespan(&self) -> Result<i64, AdminError> {
        let response = self.get(&[], &[]).await?;
        let realm: RealmRepresentation = require_found(
            self.read_json(response, "GET …/realms/{realm}", "view-realm")
                .await?,
            "GET …/realms/{realm}",
        )?;
        Ok(realm.access_token_lifespan.unwrap_or(300))
    }

    /// Returns the `realm-management` roles in the service account's access token, to check
    /// at start-up that the portal may do its work.
    pub async fn service_account_roles(&self) -> Result<Vec<String>, AdminError> {
        use base64::Engine as _;
        let token = self.token(false).await?;
        let payload = token
            .split('.')
            .nth(1)
            .ok_or_else(|| AdminError::Token("the service-account token is not a JWT".into()))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|error| {
                AdminError::Token(format!("the token payload is not base64: {error}"))
            })?;
        let claims: serde_json::Value = serde_json::from_slice(&bytes).map_err(|error| {
            AdminError::Token(format!("the token payload is not JSON: {error}"))
        })?;
        let roles = claims
            .pointer("/resource_access/realm-management/roles")
            .and_then(serde_json::Value::as_array)
            .map(|roles| {
                roles
                    .iter()
                    .filter_map(|role| role.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(roles)
    }
}

#[async_trait::async_trait]
impl Directory for KeycloakAdmin {
    async fn role_exists(&self, role: &KeycloakRole) -> Result<bool, String> {
        let result = match role {
            KeycloakRole::Realm(name) => self.exists(&["roles", name], "view-realm").await,
            KeycloakRole::Client(client, name) => match self.client_uuid(client).await {
                Ok(Some(uuid)) => {
                    self.exists(&["clients", &uuid, "roles", name], "view-clients")
                        .await
                }
                Ok(None) => Ok(false),
                Err(error) => Err(error),
            },
        };
        result.map_err(|error| error.to_string())
    }

    async fn group_exists(&self, path: &str) -> Result<bool, String> {
        // `group-by-path` takes the path's own segments: `/parent/child` is
        // `group-by-path/parent/child`.
        let mut segments = vec!["group-by-path"];
        segments.extend(path.split('/').filter(|part| !part.is_empty()));
        self.exists(&segments, "query-groups")
            .await
            .map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("db-admin"), "db-admin");
        assert_eq!(segment("a/b;c=d+e f"), "a%2Fb%3Bc%3Dd%2Be%20f");
    }
}
