//! The realm's OpenID provider metadata and signing keys, fetched lazily and cached.
//!
//! The portal starts without Keycloak: discovery runs at the first sign-in and again after
//! [`METADATA_TTL`], so a Keycloak that was down at start-up is picked up once it is back.

use std::time::{Duration, Instant};

use openidconnect::core::{CoreClient, CoreJsonWebKeySet};
use openidconnect::{
    ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    ProviderMetadataWithLogout, RedirectUrl,
};
use tokio::sync::RwLock;

use crate::config::Config;

/// How long discovery results are reused before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// The shortest time between two key-set fetches triggered by an unknown `kid`, so that a
/// stream of forged tokens cannot make the portal hammer Keycloak.
const MIN_KEY_REFRESH: Duration = Duration::from_secs(10);

/// Time allowed for Keycloak calls made while a browser waits: the sign-in probe and token
/// refreshes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The OIDC client with the endpoints that discovery provides.
pub type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("OIDC discovery at {issuer} failed: {reason}")]
    Discovery { issuer: String, reason: String },
    #[error("fetching the signing keys of {issuer} failed: {reason}")]
    Keys { issuer: String, reason: String },
}

struct Cached {
    metadata: ProviderMetadataWithLogout,
    fetched_at: Instant,
    /// When an unknown `kid` last caused a key-set fetch.
    keys_refreshed_at: Option<Instant>,
}

pub struct Provider {
    http: reqwest::Client,
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: ClientSecret,
    redirect_url: RedirectUrl,
    cached: RwLock<Option<Cached>>,
    /// Held while the key set is fetched after an unknown `kid`, so that concurrent callers
    /// wait for one fetch instead of each starting their own.
    key_refresh: tokio::sync::Mutex<()>,
}

impl Provider {
    pub fn new(config: &Config, http: reqwest::Client) -> Result<Self, String> {
        let issuer = IssuerUrl::new(config.keycloak.issuer_url())
            .map_err(|error| format!("invalid Keycloak issuer URL: {error}"))?;
        let redirect = format!(
            "{}/auth/callback",
            config.public_url.as_str().trim_end_matches('/')
        );
        let redirect_url = RedirectUrl::new(redirect)
            .map_err(|error| format!("invalid redirect URL built from public_url: {error}"))?;
        Ok(Self {
            http,
            issuer,
            client_id: ClientId::new(config.keycloak.client_id.clone()),
            client_secret: ClientSecret::new(config.keycloak.client_secret().to_owned()),
            redirect_url,
            cached: RwLock::new(None),
            key_refresh: tokio::sync::Mutex::new(()),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    pub fn client_id(&self) -> &str {
        self.client_id.as_str()
    }

    /// Checks that Keycloak serves the discovery document now, within [`PROBE_TIMEOUT`].
    pub async fn probe(&self) -> Result<(), ProviderError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.as_str().trim_end_matches('/')
        );
        let failed = |reason: String| ProviderError::Discovery {
            issuer: self.issuer.to_string(),
            reason,
        };
        let response = self
            .http
            .get(&url)
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .map_err(|error| failed(error_chain(&error)))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(failed(format!("GET {url} returned {}", response.status())))
        }
    }

    /// Returns the provider metadata, running discovery when none is cached or it is stale.
    pub async fn metadata(&self) -> Result<ProviderMetadataWithLogout, ProviderError> {
        if let Some(cached) = self.cached.read().await.as_ref() {
            if cached.fetched_at.elapsed() < METADATA_TTL {
                return Ok(cached.metadata.clone());
            }
        }
        let metadata = ProviderMetadataWithLogout::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|error| ProviderError::Discovery {
                issuer: self.issuer.to_string(),
                reason: error_chain(&error),
            })?;
        tracing::info!(issuer = %self.issuer, "fetched OIDC discovery document and signing keys");
        *self.cached.write().await = Some(Cached {
            metadata: metadata.clone(),
            fetched_at: Instant::now(),
            keys_refreshed_at: None,
        });
        Ok(metadata)
    }

    /// Fetches the key set again after a token named an unknown `kid`, at most once per
    /// [`MIN_KEY_REFRESH`]. Returns the metadata with the current keys.
    pub async fn refresh_keys(&self) -> Result<ProviderMetadataWithLogout, ProviderError> {
        let metadata = self.metadata().await?;
        let _refreshing = self.key_refresh.lock().await;
        {
            let cached = self.cached.read().await;
            if let Some(cached) = cached.as_ref() {
                let recent = cached
                    .keys_refreshed_at
                    .is_some_and(|at| at.elapsed() < MIN_KEY_REFRESH);
                if recent {
                    return Ok(cached.metadata.clone());
                }
            }
        }
        let keys = CoreJsonWebKeySet::fetch_async(metadata.jwks_uri(), &self.http)
            .await
            .map_err(|error| ProviderError::Keys {
                issuer: self.issuer.to_string(),
                reason: error_chain(&error),
            })?;
        tracing::info!(issuer = %self.issuer, keys = keys.keys().len(), "refetched signing keys after an unknown key id");
        let metadata = metadata.set_jwks(keys);
        let mut cached = self.cached.write().await;
        if let Some(cached) = cached.as_mut() {
            cached.metadata = metadata.clone();
            cached.keys_refreshed_at = Some(Instant::now());
        }
        Ok(metadata)
    }

    /// Builds the OIDC client for `metadata`, with the portal's credentials.
    pub fn client(&self, metadata: ProviderMetadataWithLogout) -> OidcClient {
        CoreClient::from_provider_metadata(
            metadata,
            self.client_id.clone(),
            Some(self.client_secret.clone()),
        )
        .set_redirect_uri(self.redirect_url.clone())
    }
}

/// Joins an error and its sources into one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
