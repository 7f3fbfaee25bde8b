//! The stint realm as the benchmark changes and reads it. Throwaway users and the bench role
//! are created and read as the master realm's `admin` (the bootstrap admin of
//! dev/keycloak.sh), so a fault in the portal's client cannot hide a leftover mapping. The
//! baseline loops send their role-mapping writes as the portal's service account, with one
//! token and no portal code in between.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::BenchError;

/// A cached token is replaced this long before it expires. The master realm's tokens live
/// 60 s by default.
const TOKEN_MARGIN: Duration = Duration::from_secs(15);

/// Users per page when a role's holders are read.
const PAGE: usize = 500;

/// Client of the Admin API of realm `stint`, signed in as the master realm's admin.
pub struct MasterAdmin {
    http: reqwest::Client,
    base_url: String,
    token: Mutex<Option<(String, Instant)>>,
}

/// A realm role as the role-mapping calls name it.
#[derive(Clone, Debug)]
pub struct Role {
    pub id: String,
    pub name: String,
}

impl MasterAdmin {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: Mutex::new(None),
        }
    }

    async fn token(&self) -> Result<String, BenchError> {
        let mut cached = self.token.lock().await;
        if let Some((token, renew_at)) = cached.as_ref() {
            if Instant::now() < *renew_at {
                return Ok(token.clone());
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
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "POST {url} as the master admin (admin/admin) returned {status}: start Keycloak \
                 with dev/keycloak.sh, which creates that admin"
            )
            .into());
        }
        let body: Value = response.json().await?;
        let token = body["access_token"]
            .as_str()
            .ok_or("the master admin's token response has no access_token")?
            .to_owned();
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(60));
        *cached = Some((
            token.clone(),
            Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN),
        ));
        Ok(token)
    }

    /// Builds `{base}/admin/realms/stint/{segments…}`, percent-encoding each segment.
    fn url(&self, segments: &[&str]) -> Result<url::Url, BenchError> {
        let mut url = url::Url::parse(&format!("{}/admin/realms/stint", self.base_url))?;
        url.path_segments_mut()
            .map_err(|()| "the Keycloak URL cannot take a path")?
            .extend(segments);
        Ok(url)
    }

    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<reqwest::Response, BenchError> {
        let mut url = self.url(segments)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.token().await?);
        if let Some(body) = body {
            request = request.json(body);
        }
        Ok(request.send().await?)
    }

    /// Sends like [`Self::send`] and fails unless Keycloak returned a success status.
    async fn expect_success(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<reqwest::Response, BenchError> {
        let call = format!("{method} …/admin/realms/stint/{}", segments.join("/"));
        let response = self.send(method, segments, query, body).await?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("{call} returned {status}: {text}").into());
        }
        Ok(response)
    }

    /// Creates realm role `name` and returns it. A role of that name left by an earlier run
    /// is deleted first, which also removes its mappings.
    pub async fn create_role(&self, name: &str) -> Result<Role, BenchError> {
        let body =
            json!({ "name": name, "description": "Throwaway role of the revocation benchmark" });
        let response = self
            .send(Method::POST, &["roles"], &[], Some(&body))
            .await?;
        if response.status() == StatusCode::CONFLICT {
            eprintln!(
                "realm role {name} exists from an earlier run; deleting and creating it again"
            );
            self.delete_role(name).await?;
            self.expect_success(Method::POST, &["roles"], &[], Some(&body))
                .await?;
        } else if !response.status().is_success() {
            return Err(format!("POST …/roles for {name} returned {}", response.status()).into());
        }
        let role: Value = self
            .expect_success(Method::GET, &["roles", name], &[], None)
            .await?
            .json()
            .await?;
        let id = role["id"].as_str().ok_or("the role has no id")?.to_owned();
        Ok(Role {
            id,
            name: name.to_owned(),
        })
    }

    /// Deletes realm role `name`. A role that is already gone is not an error.
    pub async fn delete_role(&self, name: &str) -> Result<(), BenchError> {
        let response = self
            .send(Method::DELETE, &["roles", name], &[], None)
            .await?;
        match response.status() {
            status if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
            status => Err(format!("DELETE …/roles/{name} returned {status}").into()),
        }
    }

    /// Creates an enabled user without credentials and returns its id, read from the
    /// `Location` header of the 201 response.
    pub async fn create_user(&self, username: &str) -> Result<String, BenchError> {
        let body = json!({ "username": username, "enabled": true });
        let response = self
            .expect_success(Method::POST, &["users"], &[], Some(&body))
            .await?;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| format!("POST …/users for {username} returned no Location header"))?;
        let id = location
            .rsplit('/')
            .next()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| format!("unexpected Location header {location}"))?;
        Ok(id.to_owned())
    }

    /// Deletes user `id`. A user that is already gone is not an error.
    pub async fn delete_user(&self, id: &str) -> Result<(), BenchError> {
        let response = self.send(Method::DELETE, &["users", id], &[], None).await?;
        match response.status() {
            status if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
            status => Err(format!("DELETE …/users/{id} returned {status}").into()),
        }
    }

    /// Returns whether realm role `name` is mapped directly to anyone, reading one entry.
    pub async fn role_has_holder(&self, name: &str) -> Result<bool, BenchError> {
        let query = [
            ("first", "0"),
            ("max", "1"),
            ("briefRepresentation", "true"),
        ];
        let holders: Vec<Value> = self
            .expect_success(Method::GET, &["roles", name, "users"], &query, None)
            .await?
            .json()
            .await?;
        Ok(!holders.is_empty())
    }

    /// Returns how many users have realm role `name` mapped directly, reading every page.
    pub async fn role_holder_count(&self, name: &str) -> Result<usize, BenchError> {
        let mut count = 0;
        loop {
            let first = count.to_string();
            let max = PAGE.to_string();
            let query = [
                ("first", first.as_str()),
                ("max", max.as_str()),
                ("briefRepresentation", "true"),
            ];
            let page: Vec<Value> = self
                .expect_success(Method::GET, &["roles", name, "users"], &query, None)
                .await?
                .json()
                .await?;
            count += page.len();
            if page.len() < PAGE {
                return Ok(count);
            }
        }
    }

    /// Returns whether user `user_id` has realm role `name` mapped directly.
    pub async fn has_realm_role(&self, user_id: &str, name: &str) -> Result<bool, BenchError> {
        let roles: Vec<Value> = self
            .expect_success(
                Method::GET,
                &["users", user_id, "role-mappings", "realm"],
                &[],
                None,
            )
            .await?
            .json()
            .await?;
        Ok(roles.iter().any(|role| role["name"] == name))
    }
}

/// The portal's service account with one access token, for the baseline loops.
pub struct ServiceAccount {
    http: reqwest::Client,
    base_url: String,
    token: String,
}

impl ServiceAccount {
    /// Fetches a token with the client-credentials grant, as the portal does.
    pub async fn sign_in(
        http: reqwest::Client,
        base_url: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Self, BenchError> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let url = format!("{base_url}/realms/stint/protocol/openid-connect/token");
        let response = http
            .post(&url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", client_secret),
            ])
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("POST {url} for {client_id} returned {status}").into());
        }
        let body: Value = response.json().await?;
        let token = body["access_token"]
            .as_str()
            .ok_or("the service account's token response has no access_token")?
            .to_owned();
        Ok(Self {
            http,
            base_url,
            token,
        })
    }

    /// Sends `method` (POST adds, DELETE removes) to
    /// `/admin/realms/stint/users/{user_id}/role-mappings/realm` with the one-element body
    /// that the portal sends, and fails unless Keycloak returned a success status.
    pub async fn write_mapping(
        &self,
        method: Method,
        user_id: &str,
        role: &Role,
    ) -> Result<(), BenchError> {
        let url = format!(
            "{}/admin/realms/stint/users/{user_id}/role-mappings/realm",
            self.base_url
        );
        let body = json!([{ "id": role.id, "name": role.name }]);
        let response = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{method} {url} returned {status}").into());
        }
        Ok(())
    }
}
