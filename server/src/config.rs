//! Portal configuration: defaults, then a TOML file, then environment variables.
//!
//! Every key of the file can also be set as an environment variable named `STINT_` plus the
//! key in capitals, with `__` between a table and its key (`STINT_KEYCLOAK__REALM`).
//! `DATABASE_URL` is read as well, because that is the name sqlx and most hosting platforms
//! use. Unknown keys in the file are rejected. Environment variables that name no key are
//! ignored, because the project's scripts set other `STINT_*` variables for themselves.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

/// Environment variables read on top of the file, and the key each one sets.
const ENV_KEYS: &[&str] = &[
    "listen",
    "public_url",
    "database_url",
    "catalog",
    "site_root",
    "keycloak.url",
    "keycloak.realm",
    "keycloak.client_id",
    "keycloak.client_secret",
    "keycloak.client_secret_file",
    "scheduler.enabled",
    "scheduler.lease",
    "scheduler.concurrency",
    "scheduler.max_backoff",
    "scheduler.reconcile_interval",
];

/// The portal's settings after defaults, file and environment have been merged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Socket address the HTTP server binds.
    pub listen: SocketAddr,
    /// URL at which browsers reach the portal; redirect URIs are built from it.
    pub public_url: Url,
    /// `sqlite://PATH` (created on first start) or `postgres://…`.
    pub database_url: DatabaseUrl,
    /// Policy file that lists the requestable roles.
    pub catalog: PathBuf,
    /// Folder that contains `pkg/` with the wasm bundle, its JavaScript glue and the CSS.
    pub site_root: PathBuf,
    pub keycloak: KeycloakConfig,
    /// Keycloak groups and portal-client roles that make someone an approver, auditor or
    /// admin. Every signed-in user is a requester.
    #[serde(default)]
    pub personas: PersonasConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
}

/// The grant scheduler and the reconciliation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Run the scheduler in this process. Every replica may run it; the lease splits work.
    pub enabled: bool,
    /// How long a replica keeps a claimed grant before another may take it over, such as
    /// `60s`. It must exceed the longest step: a few Keycloak calls of 15 s at most each.
    pub lease: String,
    /// Keycloak calls in flight at once.
    pub concurrency: usize,
    /// Maximum wait between two attempts of a failing step.
    pub max_backoff: String,
    /// How often the grants are compared with Keycloak's mappings; `0s` turns it off.
    pub reconcile_interval: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease: "60s".into(),
            concurrency: 16,
            max_backoff: "5m".into(),
            reconcile_interval: "5m".into(),
        }
    }
}

impl SchedulerConfig {
    fn duration(key: &str, text: &str) -> Result<std::time::Duration, ConfigError> {
        humantime::parse_duration(text.trim()).map_err(|error| {
            ConfigError(format!(
                "invalid scheduler.{key} `{text}`: {error}; write it like 30s, 5m or 1h"
            ))
        })
    }

    pub fn lease(&self) -> std::time::Duration {
        Self::duration("lease", &self.lease).unwrap_or(std::time::Duration::from_secs(60))
    }

    pub fn max_backoff(&self) -> std::time::Duration {
        Self::duration("max_backoff", &self.max_backoff)
            .unwrap_or(std::time::Duration::from_secs(300))
    }

    pub fn reconcile_interval(&self) -> std::time::Duration {
        Self::duration("reconcile_interval", &self.reconcile_interval)
            .unwrap_or(std::time::Duration::from_secs(300))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let lease = Self::duration("lease", &self.lease)?;
        if lease < std::time::Duration::from_secs(20) {
            return Err(ConfigError(format!(
                "invalid scheduler.lease `{}`: use at least 20s, longer than one step's Keycloak calls",
                self.lease
            )));
        }
        if Self::duration("max_backoff", &self.max_backoff)?.is_zero() {
            return Err(ConfigError(format!(
                "invalid scheduler.max_backoff `{}`: use at least 1s",
                self.max_backoff
            )));
        }
        Self::duration("reconcile_interval", &self.reconcile_interval)?;
        if self.concurrency == 0 || self.concurrency > 64 {
            return Err(ConfigError(format!(
                "invalid scheduler.concurrency {}: use 1 to 64",
                self.concurrency
            )));
        }
        Ok(())
    }
}

/// Sources of each persona: a user who is in any listed group or has any listed role of
/// the portal's Keycloak client has the persona.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonasConfig {
    #[serde(default)]
    pub approver: PersonaSource,
    #[serde(default)]
    pub auditor: PersonaSource,
    #[serde(default)]
    pub admin: PersonaSource,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonaSource {
    /// Group paths such as `/stint-approvers`; a missing leading `/` is added.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Roles of the portal's own client (`keycloak.client_id`).
    #[serde(default)]
    pub client_roles: Vec<String>,
}

/// Location of the realm and credentials of the portal's confidential client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakConfig {
    /// Base URL of the Keycloak server, without `/realms/…`.
    pub url: Url,
    pub realm: String,
    pub client_id: String,
    /// Client secret given inline; `client_secret_file` is the alternative.
    pub client_secret: Option<SecretString>,
    /// File whose first line is the client secret.
    pub client_secret_file: Option<PathBuf>,
}

/// Defaults for every optional key. Serialized into the first figment layer so that the
/// file and the environment override them key by key.
#[derive(Serialize)]
struct Defaults {
    listen: &'static str,
    database_url: &'static str,
    site_root: &'static str,
}

const DEFAULTS: Defaults = Defaults {
    listen: "127.0.0.1:3000",
    database_url: "sqlite://stint.db",
    site_root: "target/site",
};

/// A configuration that could not be loaded, with a message meant for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads the configuration from `file` (optional when every required key comes from the
    /// environment) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads the configuration with the given environment in place of the process's.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(DEFAULTS));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "configuration file {} not found: pass an existing file with --config",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }

        let env: Vec<(String, String)> = env.into_iter().collect();
        figment = figment.merge(environment_overrides(&env));

        let mut config: Config = figment.extract().map_err(|error| describe(&error, file))?;
        config.validate()?;
        config.keycloak.resolve_secret()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.scheduler.validate()?;
        if !matches!(self.public_url.scheme(), "http" | "https") {
            return Err(ConfigError(format!(
                "invalid public_url `{}`: use an http:// or https:// URL",
                self.public_url
            )));
        }
        if !matches!(self.keycloak.url.scheme(), "http" | "https") {
            return Err(ConfigError(format!(
                "invalid keycloak.url `{}`: use an http:// or https:// URL",
                self.keycloak.url
            )));
        }
        if self.keycloak.realm.trim().is_empty() {
            return Err(ConfigError(
                "invalid keycloak.realm: the realm name is empty".into(),
            ));
        }
        if self.keycloak.client_id.trim().is_empty() {
            return Err(ConfigError(
                "invalid keycloak.client_id: the client id is empty".into(),
            ));
        }
        Ok(())
    }

    /// Returns whether browsers reach the portal over TLS, which sets the `Secure` cookie flag.
    pub fn is_https(&self) -> bool {
        self.public_url.scheme() == "https"
    }
}

impl KeycloakConfig {
    /// Returns the OIDC issuer of the realm, as Keycloak writes it in tokens and discovery.
    pub fn issuer_url(&self) -> String {
        format!(
            "{}/realms/{}",
            self.url.as_str().trim_end_matches('/'),
            self.realm
        )
    }

    /// Checks that exactly one secret source is set and reads `client_secret_file` into
    /// `client_secret`. The file's path is kept so the summary can name it.
    fn resolve_secret(&mut self) -> Result<(), ConfigError> {
        match (&self.client_secret, &self.client_secret_file) {
            (Some(_), Some(_)) => Err(ConfigError(
                "keycloak.client_secret and keycloak.client_secret_file are both set: keep one"
                    .into(),
            )),
            (None, None) => Err(ConfigError(
                "missing keycloak.client_secret: set it, or keycloak.client_secret_file, \
                 in the configuration file or as STINT_KEYCLOAK__CLIENT_SECRET"
                    .into(),
            )),
            (Some(secret), None) if secret.expose_secret().is_empty() => Err(ConfigError(
                "invalid keycloak.client_secret: the secret is empty".into(),
            )),
            (Some(_), None) => Ok(()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    ConfigError(format!(
                        "keycloak.client_secret_file {} could not be read: {error}",
                        path.display()
                    ))
                })?;
                let secret = text.lines().next().unwrap_or_default().trim().to_owned();
                if secret.is_empty() {
                    return Err(ConfigError(format!(
                        "keycloak.client_secret_file {} is empty: write the client secret on its first line",
                        path.display()
                    )));
                }
                self.client_secret = Some(SecretString::from(secret));
                Ok(())
            }
        }
    }

    /// Returns the client secret. Loading guarantees that it is set.
    pub fn client_secret(&self) -> &str {
        self.client_secret
            .as_ref()
            .map(|secret| secret.expose_secret())
            .unwrap_or_default()
    }
}

/// Builds the environment layer from `STINT_*` variables that name a known key, and from
/// `DATABASE_URL`, which loses to `STINT_DATABASE_URL` when both are set.
fn environment_overrides(env: &[(String, String)]) -> Figment {
    let mut layer = Figment::new();
    if let Some((_, value)) = env.iter().find(|(name, _)| name == "DATABASE_URL") {
        layer = layer.merge(("database_url", value.as_str()));
    }
    for key in ENV_KEYS {
        let name = env_name(key);
        if let Some((_, value)) = env.iter().find(|(candidate, _)| *candidate == name) {
            // The number and boolean keys get typed values; every other key stays text, so
            // a secret of digits remains a string.
            layer = match (*key, value.parse::<i64>(), value.parse::<bool>()) {
                ("scheduler.concurrency", Ok(number), _) => layer.merge((*key, number)),
                ("scheduler.enabled", _, Ok(flag)) => layer.merge((*key, flag)),
                _ => layer.merge((*key, value.as_str())),
            };
        }
    }
    layer
}

/// Returns the environment variable that sets `key`, such as `STINT_KEYCLOAK__CLIENT_ID`.
fn env_name(key: &str) -> String {
    format!("STINT_{}", key.replace('.', "__").to_uppercase())
}

/// Turns a figment error into one line that names the key, its source and the fix.
fn describe(error: &figment::Error, file: Option<&Path>) -> ConfigError {
    use figment::error::Kind;

    let key = error.path.join(".");
    let source = error
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.source.as_ref())
        .map(|source| format!(" in {source}"))
        .unwrap_or_default();
    let message = match &error.kind {
        Kind::MissingField(field) => {
            let full = if key.is_empty() {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
            let where_to = match file {
                Some(path) => format!("in {}", path.display()),
                None => "in a configuration file (--config)".to_owned(),
            };
            if full == "keycloak" {
                format!("missing required table [keycloak]: add it {where_to} with url, realm, client_id and client_secret")
            } else {
                format!(
                    "missing required setting `{full}`: set it {where_to} or as {}",
                    env_name(&full)
                )
            }
        }
        Kind::UnknownField(field, expected) => {
            // figment's path already ends with the unknown field.
            let full = if key.is_empty() { field.clone() } else { key };
            format!(
                "unknown setting `{full}`{source}: remove it or use one of {}",
                expected.join(", ")
            )
        }
        _ => {
            let kind = error.kind.to_string();
            if key.is_empty() {
                format!("invalid configuration{source}: {kind}")
            } else {
                format!("invalid setting `{key}`{source}: {kind}")
            }
        }
    };
    ConfigError(message)
}

/// Prints the settings as TOML-like lines, with the client secret and any database password
/// hidden, for `stint check-config`.
impl fmt::Display for Config {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = match (
            &self.keycloak.client_secret,
            &self.keycloak.client_secret_file,
        ) {
            (_, Some(path)) => format!("(from {})", path.display()),
            (Some(_), None) => "(set, hidden)".to_owned(),
            (None, None) => "(missing)".to_owned(),
        };
        writeln!(formatter, "listen = \"{}\"", self.listen)?;
        writeln!(formatter, "public_url = \"{}\"", self.public_url)?;
        writeln!(
            formatter,
            "database_url = \"{}\"",
            self.database_url.redacted()
        )?;
        writeln!(formatter, "catalog = \"{}\"", self.catalog.display())?;
        writeln!(formatter, "site_root = \"{}\"", self.site_root.display())?;
        writeln!(formatter, "keycloak.url = \"{}\"", self.keycloak.url)?;
        writeln!(formatter, "keycloak.realm = \"{}\"", self.keycloak.realm)?;
        writeln!(
            formatter,
            "keycloak.client_id = \"{}\"",
            self.keycloak.client_id
        )?;
        writeln!(formatter, "keycloak.client_secret = {secret}")?;
        for (name, source) in [
            ("approver", &self.personas.approver),
            ("auditor", &self.personas.auditor),
            ("admin", &self.personas.admin),
        ] {
            writeln!(
                formatter,
                "personas.{name} = groups {:?}, client roles {:?}",
                source.groups, source.client_roles
            )?;
        }
        Ok(())
    }
}

/// A database URL whose password is hidden when the URL is printed or logged.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Returns the URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns the URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                // Setting a password fails only for URLs that cannot have one, and this one has.
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            _ => self.0.clone(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const VALID: &str = r#"
public_url = "http://127.0.0.1:3000"
catalog = "catalog.toml"

[keycloak]
url = "http://127.0.0.1:8180"
realm = "stint"
client_id = "stint-portal"
client_secret = "s3cr3t-value"
"#;

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let file = file_with(text);
        let env = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()));
        Config::load_from(Some(file.path()), env)
    }

    #[test]
    fn defaults_fill_optional_keys() {
        let config = load(VALID, &[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(config.database_url.expose(), "sqlite://stint.db");
        assert_eq!(config.site_root, PathBuf::from("target/site"));
        assert_eq!(config.keycloak.client_secret(), "s3cr3t-value");
        assert_eq!(
            config.keycloak.issuer_url(),
            "http://127.0.0.1:8180/realms/stint"
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error = load(&format!("lisen = \"0.0.0.0:80\"\n{VALID}"), &[]).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("unknown setting `lisen`"), "{message}");
        assert!(message.contains("listen"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn unknown_nested_key_is_rejected() {
        let error = load(&format!("{VALID}clientid = \"x\"\n"), &[]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("unknown setting `keycloak.clientid`"),
            "{error}"
        );
    }

    #[test]
    fn missing_required_value_names_key_and_variable() {
        let text = VALID.replace("realm = \"stint\"\n", "");
        let message = load(&text, &[]).unwrap_err().to_string();
        assert!(
            message.contains("missing required setting `keycloak.realm`"),
            "{message}"
        );
        assert!(message.contains("STINT_KEYCLOAK__REALM"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn missing_secret_is_rejected() {
        let text = VALID.replace("client_secret = \"s3cr3t-value\"\n", "");
        let message = load(&text, &[]).unwrap_err().to_string();
        assert!(
            message.contains("missing keycloak.client_secret"),
            "{message}"
        );
    }

    #[test]
    fn environment_overrides_file() {
        let config = load(
            VALID,
            &[
                ("STINT_LISTEN", "127.0.0.1:4000"),
                ("STINT_KEYCLOAK__REALM", "other"),
                ("DATABASE_URL", "postgres://stint@localhost/stint"),
                ("STINT_UNRELATED", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(config.keycloak.realm, "other");
        assert_eq!(
            config.database_url.expose(),
            "postgres://stint@localhost/stint"
        );
    }

    #[test]
    fn stint_database_url_wins_over_database_url() {
        let config = load(
            VALID,
            &[
                ("DATABASE_URL", "postgres://a@localhost/a"),
                ("STINT_DATABASE_URL", "sqlite://b.db"),
            ],
        )
        .unwrap();
        assert_eq!(config.database_url.expose(), "sqlite://b.db");
    }

    #[test]
    fn invalid_value_names_key() {
        let message = load(VALID, &[("STINT_LISTEN", "not-an-address")])
            .unwrap_err()
            .to_string();
        assert!(message.contains("invalid setting `listen`"), "{message}");
    }

    #[test]
    fn non_http_public_url_is_rejected() {
        let text = VALID.replace("http://127.0.0.1:3000", "ftp://portal");
        let message = load(&text, &[]).unwrap_err().to_string();
        assert!(message.contains("invalid public_url"), "{message}");
    }

    #[test]
    fn secret_file_is_read() {
        let secret = file_with("from-file\n");
        let text = VALID.replace(
            "client_secret = \"s3cr3t-value\"",
            &format!("client_secret_file = \"{}\"", secret.path().display()),
        );
        let config = load(&text, &[]).unwrap();
        assert_eq!(config.keycloak.client_secret(), "from-file");
    }

    #[test]
    fn secret_and_secret_file_conflict() {
        let secret = file_with("from-file\n");
        let text = format!(
            "{VALID}client_secret_file = \"{}\"\n",
            secret.path().display()
        );
        let message = load(&text, &[]).unwrap_err().to_string();
        assert!(message.contains("both set"), "{message}");
    }

    #[test]
    fn missing_file_is_reported() {
        let message = Config::load_from(Some(Path::new("/nonexistent/stint.toml")), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("/nonexistent/stint.toml not found"),
            "{message}"
        );
    }

    #[test]
    fn secrets_are_hidden_in_debug_and_display() {
        let config = load(
            VALID,
            &[(
                "DATABASE_URL",
                "postgres://stint:db-password@localhost/stint",
            )],
        )
        .unwrap();
        for text in [format!("{config:?}"), config.to_string()] {
            assert!(!text.contains("s3cr3t-value"), "{text}");
            assert!(!text.contains("db-password"), "{text}");
            assert!(
                text.contains("postgres://stint:***@localhost/stint"),
                "{text}"
            );
        }
    }
}
