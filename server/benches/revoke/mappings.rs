//! The Keycloak side of the scheduler in the benchmark. [`Recorder`] wraps the real
//! [`KeycloakAdmin`] and notes when each removal returned and how long each kind of call
//! took. [`ImmediateKeycloak`] returns at once, to measure the scheduler's own cost.
//!
//! [`KeycloakAdmin`]: app::server::keycloak::KeycloakAdmin

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use app::server::catalog::KeycloakRole;
use app::server::grants::mappings::{Failure, RoleMappings};
use app::server::keycloak::{KeycloakAnswer, RoleRef};

use crate::unix_now;

/// Calls of one kind: how many, and their summed duration in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallStats {
    pub count: u64,
    pub seconds: f64,
}

/// A [`RoleMappings`] that forwards every call to `inner` and records, per user, the Unix
/// time in seconds at which a successful `remove_mapping` returned.
pub struct Recorder {
    inner: Arc<dyn RoleMappings>,
    removed: Mutex<HashMap<String, f64>>,
    calls: Mutex<BTreeMap<&'static str, CallStats>>,
}

impl Recorder {
    pub fn new(inner: Arc<dyn RoleMappings>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            removed: Mutex::new(HashMap::new()),
            calls: Mutex::new(BTreeMap::new()),
        })
    }

    /// Forgets the removals and call statistics recorded so far.
    pub fn reset(&self) {
        self.removed.lock().unwrap().clear();
        self.calls.lock().unwrap().clear();
    }

    pub fn removed_count(&self) -> usize {
        self.removed.lock().unwrap().len()
    }

    /// Returns the recorded removals as user id and Unix time.
    pub fn removals(&self) -> HashMap<String, f64> {
        self.removed.lock().unwrap().clone()
    }

    /// Returns the statistics of every kind of call since the last reset.
    pub fn calls(&self) -> BTreeMap<&'static str, CallStats> {
        self.calls.lock().unwrap().clone()
    }

    async fn timed<T>(&self, name: &'static str, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = call.await;
        let seconds = started.elapsed().as_secs_f64();
        let mut calls = self.calls.lock().unwrap();
        let stats = calls.entry(name).or_default();
        stats.count += 1;
        stats.seconds += seconds;
        result
    }
}

#[async_trait::async_trait]
impl RoleMappings for Recorder {
    async fn find_role(&self, role: &KeycloakRole) -> Result<Option<RoleRef>, Failure> {
        self.timed("find_role", self.inner.find_role(role)).await
    }

    async fn role_by_id(&self, id: &str) -> Result<Option<RoleRef>, Failure> {
        self.timed("role_by_id", self.inner.role_by_id(id)).await
    }

    async fn has_direct_mapping(
        &self,
        user: &str,
        role: &RoleRef,
    ) -> Result<Option<bool>, Failure> {
        self.timed(
            "has_direct_mapping",
            self.inner.has_direct_mapping(user, role),
        )
        .await
    }

    async fn has_effective_role(
        &self,
        user: &str,
        role: &RoleRef,
    ) -> Result<Option<bool>, Failure> {
        self.timed(
            "has_effective_role",
            self.inner.has_effective_role(user, role),
        )
        .await
    }

    async fn add_mapping(&self, user: &str, role: &RoleRef) -> Result<KeycloakAnswer, Failure> {
        self.timed("add_mapping", self.inner.add_mapping(user, role))
            .await
    }

    async fn remove_mapping(&self, user: &str, role: &RoleRef) -> Result<KeycloakAnswer, Failure> {
        let result = self
            .timed("remove_mapping", self.inner.remove_mapping(user, role))
            .await;
        if result.is_ok() {
            let at = unix_now();
            self.removed.lock().unwrap().insert(user.to_owned(), at);
        }
        result
    }

    async fn logout_user(&self, user: &str) -> Result<KeycloakAnswer, Failure> {
        self.timed("logout_user", self.inner.logout_user(user))
            .await
    }

    async fn memberships(&self, user: &str) -> Result<Option<(Vec<String>, Vec<String>)>, Failure> {
        self.timed("memberships", self.inner.memberships(user))
            .await
    }

    async fn role_holders(&self, role: &RoleRef) -> Result<Vec<(String, String)>, Failure> {
        self.timed("role_holders", self.inner.role_holders(role))
            .await
    }

    async fn access_token_lifespan(&self) -> Result<i64, Failure> {
        self.timed("access_token_lifespan", self.inner.access_token_lifespan())
            .await
    }
}

/// A Keycloak that returns success at once and keeps no state. Every user exists and has no
/// mapping before or after a call, and every role lookup returns `role`.
pub struct ImmediateKeycloak {
    pub role: RoleRef,
}

#[async_trait::async_trait]
impl RoleMappings for ImmediateKeycloak {
    async fn find_role(&self, _role: &KeycloakRole) -> Result<Option<RoleRef>, Failure> {
        Ok(Some(self.role.clone()))
    }

    async fn role_by_id(&self, _id: &str) -> Result<Option<RoleRef>, Failure> {
        Ok(Some(self.role.clone()))
    }

    async fn has_direct_mapping(
        &self,
        _user: &str,
        _role: &RoleRef,
    ) -> Result<Option<bool>, Failure> {
        Ok(Some(false))
    }

    async fn has_effective_role(
        &self,
        _user: &str,
        _role: &RoleRef,
    ) -> Result<Option<bool>, Failure> {
        Ok(Some(false))
    }

    async fn add_mapping(&self, _user: &str, _role: &RoleRef) -> Result<KeycloakAnswer, Failure> {
        Ok(KeycloakAnswer("POST returned 204 (no Keycloak)".into()))
    }

    async fn remove_mapping(
        &self,
        _user: &str,
        _role: &RoleRef,
    ) -> Result<KeycloakAnswer, Failure> {
        Ok(KeycloakAnswer("DELETE returned 204 (no Keycloak)".into()))
    }

    async fn logout_user(&self, _user: &str) -> Result<KeycloakAnswer, Failure> {
        Ok(KeycloakAnswer(
            "POST logout returned 204 (no Keycloak)".into(),
        ))
    }

    async fn memberships(
        &self,
        _user: &str,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, Failure> {
        Ok(Some((Vec::new(), Vec::new())))
    }

    async fn role_holders(&self, _role: &RoleRef) -> Result<Vec<(String, String)>, Failure> {
        Ok(Vec::new())
    }

    async fn access_token_lifespan(&self) -> Result<i64, Failure> {
        Ok(300)
    }
}
