//! The stint realm changed and read as the master realm's `admin` (the bootstrap admin that
//! dev/keycloak.sh creates). Tests create throwaway users, roles and groups with unique
//! names through a [`Fixture`], which deletes them when it is dropped. Mappings are read
//! here instead of through the portal's client, so a fault in that client cannot hide a
//! missing or leftover mapping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A cached token is replaced this long before it expires. The master realm's tokens live
/// 60 s by default, which is shorter than a run of the whole binary.
const TOKEN_MARGIN: Duration = Duration::from_secs(15);

/// Client of the Admin API of realm `stint`, signed in as the master realm's admin.
pub struct RealmAdmin {
    http: reqwest::Client,
    base_url: String,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl RealmAdmin {
    pub fn new(base_url: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: tokio::sync::Mutex::new(None),
        }
    }

    async fn token(&self) -> String {
        let mut cached = self.token.lock().await;
        if let Some((token, renew_at)) = cached.as_ref() {
            if Instant::now() < *renew_at {
                return token.clone();
            }
        }
        let url = format!(
            "{}/realms/master/protocol/openid-connect/token",
            self.base_url
        );
        let response = self
            .http
            .post(&url)
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", "admin"),
                ("password", "admin"),
            ])
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "POST {url} as the master admin returned {}",
            response.status()
        );
        let body: Value = response.json().await.unwrap();
        let token = body["access_token"].as_str().unwrap().to_owned();
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(60));
        *cached = Some((
            token.clone(),
            Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN),
        ));
        token
    }

    /// Builds `{base}/admin/realms/stint/{segments…}`, percent-encoding each segment.
    fn url(&self, segments: &[&str]) -> url::Url {
        let path: Vec<String> = segments.iter().map(|part| encode_segment(part)).collect();
        let text = format!("{}/admin/realms/stint/{}", self.base_url, path.join("/"));
        url::Url::parse(text.trim_end_matches('/')).unwrap()
    }

    /// Sends `method` to the realm path `segments` with an optional JSON body.
    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, self.url(segments))
            .bearer_auth(self.token().await);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.unwrap()
    }

    /// Sends like [`Self::send`] and asserts that Keycloak returned a success status.
    pub async fn expect_success(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
    ) -> reqwest::Response {
        let what = format!("{method} {}", self.url(segments));
        let response = self.send(method, segments, body).await;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            panic!("{what} returned {status}: {text}");
        }
        response
    }

    pub async fn get_json(&self, segments: &[&str]) -> Value {
        self.expect_success(Method::GET, segments, None)
            .await
            .json()
            .await
            .unwrap()
    }

    /// Sends `GET segments?query` and returns the JSON body.
    async fn get_query(&self, segments: &[&str], query: &[(&str, &str)]) -> Value {
        let mut url = self.url(segments);
        url.query_pairs_mut().extend_pairs(query);
        let response = self
            .http
            .get(url.clone())
            .bearer_auth(self.token().await)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {url} returned {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Returns the representation of realm role `name`.
    pub async fn realm_role(&self, name: &str) -> Value {
        self.get_json(&["roles", name]).await
    }

    /// Returns the internal id of the client whose `clientId` is `client_id`.
    pub async fn client_uuid(&self, client_id: &str) -> String {
        let clients = self
            .get_query(&["clients"], &[("clientId", client_id)])
            .await;
        clients[0]["id"].as_str().unwrap().to_owned()
    }

    /// Returns the names of the realm roles mapped directly to `user_id`.
    pub async fn direct_realm_roles(&self, user_id: &str) -> Vec<String> {
        let roles = self
            .get_json(&["users", user_id, "role-mappings", "realm"])
            .await;
        names(&roles)
    }

    /// Returns the names of the realm roles effective for `user_id`: direct, through groups
    /// and through composite roles.
    pub async fn effective_realm_roles(&self, user_id: &str) -> Vec<String> {
        let roles = self
            .get_json(&["users", user_id, "role-mappings", "realm", "composite"])
            .await;
        names(&roles)
    }

    /// Returns the names of the roles of client `client_id` mapped directly to `user_id`.
    pub async fn direct_client_roles(&self, user_id: &str, client_id: &str) -> Vec<String> {
        let uuid = self.client_uuid(client_id).await;
        let roles = self
            .get_json(&["users", user_id, "role-mappings", "clients", &uuid])
            .await;
        names(&roles)
    }

    /// Returns whether realm role `name` is mapped directly to `user_id`.
    pub async fn holds_realm_role(&self, user_id: &str, name: &str) -> bool {
        self.direct_realm_roles(user_id)
            .await
            .iter()
            .any(|held| held == name)
    }

    /// Maps realm role `name` directly to `user_id`.
    pub async fn map_realm_role(&self, user_id: &str, name: &str) {
        let role = self.realm_role(name).await;
        self.expect_success(
            Method::POST,
            &["users", user_id, "role-mappings", "realm"],
            Some(&json!([role])),
        )
        .await;
    }

    /// Removes the direct mapping of realm role `name` from `user_id`.
    pub async fn unmap_realm_role(&self, user_id: &str, name: &str) {
        let role = self.realm_role(name).await;
        self.expect_success(
            Method::DELETE,
            &["users", user_id, "role-mappings", "realm"],
            Some(&json!([role])),
        )
        .await;
    }

    /// Returns the id of the group at full path `path`, such as `/engineering`.
    pub async fn group_id(&self, path: &str) -> String {
        let mut segments = vec!["group-by-path"];
        segments.extend(path.split('/').filter(|part| !part.is_empty()));
        let group = self.get_json(&segments).await;
        group["id"].as_str().unwrap().to_owned()
    }

    /// Returns the id of user `username`.
    async fn user_id(&self, username: &str) -> String {
        let users = self
            .get_query(&["users"], &[("username", username), ("exact", "true")])
            .await;
        users[0]["id"].as_str().unwrap().to_owned()
    }

    /// Renames the realm role `name` to `new_name`. Its id and mappings stay.
    pub async fn rename_realm_role(&self, name: &str, new_name: &str) {
        let mut role = self.realm_role(name).await;
        let id = role["id"].as_str().unwrap().to_owned();
        role["name"] = json!(new_name);
        self.expect_success(Method::PUT, &["roles-by-id", &id], Some(&role))
            .await;
    }

    /// Sets the `notBefore` time of client `client_id`: Keycloak then rejects every token
    /// issued to the client before `at` (Unix seconds).
    pub async fn set_client_not_before(&self, client_id: &str, at: i64) {
        let uuid = self.client_uuid(client_id).await;
        let mut client = self.get_json(&["clients", &uuid]).await;
        client["notBefore"] = json!(at);
        self.expect_success(Method::PUT, &["clients", &uuid], Some(&client))
            .await;
    }

    /// Deletes what `item` names and returns Keycloak's status.
    async fn delete(&self, item: &Created) -> StatusCode {
        let segments: Vec<&str> = match item {
            Created::User(id) => vec!["users", id],
            Created::Role(id) => vec!["roles-by-id", id],
            Created::Group(id) => vec!["groups", id],
            Created::Client(id) => vec!["clients", id],
        };
        self.send(Method::DELETE, &segments, None).await.status()
    }
}

/// Percent-encodes every byte outside the unreserved set of RFC 3986. The `url` crate
/// leaves `;` and `=` as they are, which Keycloak's JAX-RS layer reads as matrix
/// parameters.
fn encode_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn names(roles: &Value) -> Vec<String> {
    let mut names: Vec<String> = roles
        .as_array()
        .map(|roles| {
            roles
                .iter()
                .filter_map(|role| role["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The client secret of every confidential client that a [`Fixture`] creates.
pub const TEST_CLIENT_SECRET: &str = "stint-test-client-secret";

/// A user created for one test.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: String,
    pub username: String,
}

/// Something a [`Fixture`] created and deletes at the end, by id.
enum Created {
    User(String),
    /// A realm or client role.
    Role(String),
    Group(String),
    Client(String),
}

/// Returns `prefix` followed by a random suffix, unique across runs and tests.
pub fn unique(prefix: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &suffix[..12])
}

/// Throwaway users, roles and groups of one test, deleted when the fixture is dropped,
/// also when the test fails.
pub struct Fixture {
    pub realm: RealmAdmin,
    base_url: String,
    created: Mutex<Vec<Created>>,
}

impl Fixture {
    pub fn new(base_url: &str) -> Self {
        Self {
            realm: RealmAdmin::new(base_url),
            base_url: base_url.to_owned(),
            created: Mutex::new(Vec::new()),
        }
    }

    fn remember(&self, item: Created) {
        self.created.lock().unwrap().push(item);
    }

    /// Creates an enabled user named `stint-test-{label}-…`, without a password.
    pub async fn user(&self, label: &str) -> TestUser {
        let username = unique(&format!("stint-test-{label}"));
        let body = json!({
            "username": username,
            "enabled": true,
            "firstName": "Test",
            "lastName": label,
            "email": format!("{username}@example.test"),
            "emailVerified": true,
        });
        self.realm
            .expect_success(Method::POST, &["users"], Some(&body))
            .await;
        let id = self.realm.user_id(&username).await;
        self.remember(Created::User(id.clone()));
        TestUser { id, username }
    }

    /// Creates a realm role named `stint-test-{label}-…` and returns its name. `label`
    /// may contain any character that Keycloak accepts in a role name.
    pub async fn realm_role(&self, label: &str) -> String {
        let name = unique(&format!("stint-test-{label}"));
        let body = json!({ "name": name, "description": "created by a Stint test" });
        self.realm
            .expect_success(Method::POST, &["roles"], Some(&body))
            .await;
        let role = self.realm.realm_role(&name).await;
        self.remember(Created::Role(role["id"].as_str().unwrap().to_owned()));
        name
    }

    /// Creates a role named `stint-test-{label}-…` of client `client_id` and returns its
    /// name.
    pub async fn client_role(&self, client_id: &str, label: &str) -> String {
        let name = unique(&format!("stint-test-{label}"));
        let uuid = self.realm.client_uuid(client_id).await;
        let body = json!({ "name": name, "description": "created by a Stint test" });
        self.realm
            .expect_success(Method::POST, &["clients", &uuid, "roles"], Some(&body))
            .await;
        let role = self
            .realm
            .get_json(&["clients", &uuid, "roles", &name])
            .await;
        self.remember(Created::Role(role["id"].as_str().unwrap().to_owned()));
        name
    }

    /// Maps role `name` of client `client_id` directly to `user`.
    pub async fn map_client_role(&self, user: &TestUser, client_id: &str, name: &str) {
        let uuid = self.realm.client_uuid(client_id).await;
        let role = self
            .realm
            .get_json(&["clients", &uuid, "roles", name])
            .await;
        self.realm
            .expect_success(
                Method::POST,
                &["users", &user.id, "role-mappings", "clients", &uuid],
                Some(&json!([role])),
            )
            .await;
    }

    /// Creates a top-level group named `stint-test-{label}-…` and returns its id.
    pub async fn group(&self, label: &str) -> String {
        let name = unique(&format!("stint-test-{label}"));
        self.realm
            .expect_success(Method::POST, &["groups"], Some(&json!({ "name": name })))
            .await;
        let id = self.realm.group_id(&format!("/{name}")).await;
        self.remember(Created::Group(id.clone()));
        id
    }

    /// Maps realm role `name` to the group with id `group_id`.
    pub async fn map_role_to_group(&self, group_id: &str, name: &str) {
        let role = self.realm.realm_role(name).await;
        self.realm
            .expect_success(
                Method::POST,
                &["groups", group_id, "role-mappings", "realm"],
                Some(&json!([role])),
            )
            .await;
    }

    /// Makes `user` a member of the group with id `group_id`.
    pub async fn join_group_id(&self, user: &TestUser, group_id: &str) {
        self.realm
            .expect_success(Method::PUT, &["users", &user.id, "groups", group_id], None)
            .await;
    }

    /// Makes `user` a member of the group at full path `path`.
    pub async fn join_group(&self, user: &TestUser, path: &str) {
        let group_id = self.realm.group_id(path).await;
        self.join_group_id(user, &group_id).await;
    }

    /// Creates a confidential client named `stint-test-{label}-…` whose service account
    /// has the `realm-management` roles `roles`, and returns its `clientId`. Its secret is
    /// [`TEST_CLIENT_SECRET`].
    pub async fn service_client(&self, label: &str, roles: &[&str]) -> String {
        let client_id = unique(&format!("stint-test-{label}"));
        let body = json!({
            "clientId": client_id,
            "enabled": true,
            "publicClient": false,
            "clientAuthenticatorType": "client-secret",
            "secret": TEST_CLIENT_SECRET,
            "serviceAccountsEnabled": true,
            "standardFlowEnabled": false,
            "directAccessGrantsEnabled": false,
        });
        self.realm
            .expect_success(Method::POST, &["clients"], Some(&body))
            .await;
        let uuid = self.realm.client_uuid(&client_id).await;
        self.remember(Created::Client(uuid));
        self.grant_realm_management(&client_id, roles).await;
        client_id
    }

    /// Gives the service account of client `client_id` the `realm-management` roles
    /// `roles`.
    pub async fn grant_realm_management(&self, client_id: &str, roles: &[&str]) {
        if roles.is_empty() {
            return;
        }
        let uuid = self.realm.client_uuid(client_id).await;
        let account = self
            .realm
            .get_json(&["clients", &uuid, "service-account-user"])
            .await;
        let account_id = account["id"].as_str().unwrap().to_owned();
        let management = self.realm.client_uuid("realm-management").await;
        let mut representations = Vec::new();
        for role in roles {
            representations.push(
                self.realm
                    .get_json(&["clients", &management, "roles", role])
                    .await,
            );
        }
        self.realm
            .expect_success(
                Method::POST,
                &[
                    "users",
                    &account_id,
                    "role-mappings",
                    "clients",
                    &management,
                ],
                Some(&Value::Array(representations)),
            )
            .await;
    }

    /// Removes `user` from the group at full path `path`.
    pub async fn leave_group(&self, user: &TestUser, path: &str) {
        let group_id = self.realm.group_id(path).await;
        self.realm
            .expect_success(
                Method::DELETE,
                &["users", &user.id, "groups", &group_id],
                None,
            )
            .await;
    }

    /// Deletes `user` now.
    pub async fn delete_user(&self, user: &TestUser) {
        self.realm
            .expect_success(Method::DELETE, &["users", &user.id], None)
            .await;
    }

    /// Deletes realm role `name` now, which also removes every mapping of it.
    pub async fn delete_realm_role(&self, name: &str) {
        self.realm
            .expect_success(Method::DELETE, &["roles", name], None)
            .await;
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let created = match self.created.get_mut() {
            Ok(created) => std::mem::take(created),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        if created.is_empty() {
            return;
        }
        // Drop cannot await, and the test's runtime may be shutting down, so the deletions
        // run on a runtime and an HTTP client of their own.
        let base_url = self.base_url.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let realm = RealmAdmin::new(&base_url);
                for item in created.iter().rev() {
                    let status = realm.delete(item).await;
                    // A 404 means the test deleted the item itself.
                    if !status.is_success() && status != StatusCode::NOT_FOUND {
                        eprintln!("deleting a test user, role or group returned {status}");
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}
