//! The user and their personas, built from Keycloak's tokens.
//!
//! Roles are only in the access token (`realm_access.roles`, `resource_access.{client}.roles`),
//! not in the ID token (Keycloak 26). The access token comes straight from the token
//! endpoint over the portal's own connection, so its payload is read without checking its
//! signature again. The ID token of the same response is fully validated.

use std::collections::HashMap;

use app::model::user::{CurrentUser, Persona};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

use crate::config::{PersonaSource, PersonasConfig};

#[derive(Debug, Default, Deserialize)]
pub struct AccessClaims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub realm_access: Option<RoleList>,
    #[serde(default)]
    pub resource_access: HashMap<String, RoleList>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RoleList {
    #[serde(default)]
    pub roles: Vec<String>,
}

/// Reads the payload of a JWT without checking its signature.
pub fn decode_unverified<T: serde::de::DeserializeOwned>(jwt: &str) -> Result<T, String> {
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| "the token is not a JWT (no payload part)".to_owned())?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|error| format!("the token payload is not base64url: {error}"))?;
    serde_json::from_slice(&bytes)
        .map_err(|error| format!("the token payload is not valid JSON: {error}"))
}

/// Identity fields taken from the validated ID token.
pub struct Identity {
    pub subject: String,
    pub username: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// Builds the user from the ID token's identity and the access token's roles and groups.
pub fn current_user(
    identity: Identity,
    access: &AccessClaims,
    client_id: &str,
    personas: &PersonasConfig,
) -> CurrentUser {
    let mut groups = access.groups.clone();
    groups.sort();
    let mut realm_roles = access
        .realm_access
        .as_ref()
        .map(|list| list.roles.clone())
        .unwrap_or_default();
    realm_roles.sort();
    let mut client_roles = access
        .resource_access
        .get(client_id)
        .map(|list| list.roles.clone())
        .unwrap_or_default();
    client_roles.sort();

    let username = identity
        .username
        .or_else(|| access.preferred_username.clone())
        .unwrap_or_else(|| identity.subject.clone());
    let display_name = identity
        .name
        .or_else(|| access.name.clone())
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| username.clone());

    let mut user = CurrentUser {
        subject: identity.subject,
        username,
        display_name,
        email: identity.email.or_else(|| access.email.clone()),
        groups,
        realm_roles,
        client_roles,
        personas: Vec::new(),
    };
    user.personas = personas_of(&user, personas);
    user
}

/// Computes the personas of `user`: requester always, the others from configured groups
/// and portal-client roles.
pub fn personas_of(user: &CurrentUser, config: &PersonasConfig) -> Vec<Persona> {
    let mut personas = vec![Persona::Requester];
    for (persona, source) in [
        (Persona::Approver, &config.approver),
        (Persona::Auditor, &config.auditor),
        (Persona::Admin, &config.admin),
    ] {
        if grants(source, user) {
            personas.push(persona);
        }
    }
    personas
}

fn grants(source: &PersonaSource, user: &CurrentUser) -> bool {
    let in_group = source.groups.iter().any(|wanted| {
        let wanted = normalize_group(wanted);
        user.groups
            .iter()
            .any(|group| normalize_group(group) == wanted)
    });
    let has_role = source
        .client_roles
        .iter()
        .any(|role| user.client_roles.contains(role));
    in_group || has_role
}

/// Keycloak's group mapper writes full paths (`/parent/child`) when "full group path" is on
/// and bare names when it is off; configured names may be written either way.
fn normalize_group(group: &str) -> String {
    if group.starts_with('/') {
        group.to_owned()
    } else {
        format!("/{group}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PersonasConfig {
        PersonasConfig {
            approver: PersonaSource {
                groups: vec!["stint-approvers".into()],
                client_roles: vec!["approver".into()],
            },
            auditor: PersonaSource {
                groups: vec!["/stint-auditors".into()],
                client_roles: vec![],
            },
            admin: PersonaSource {
                groups: vec![],
                client_roles: vec!["admin".into()],
            },
        }
    }

    fn access(groups: &[&str], client_roles: &[&str]) -> AccessClaims {
        let mut resource_access = HashMap::new();
        resource_access.insert(
            "stint-portal".to_owned(),
            RoleList {
                roles: client_roles.iter().map(|r| r.to_string()).collect(),
            },
        );
        resource_access.insert(
            "other-client".to_owned(),
            RoleList {
                roles: vec!["admin".into()],
            },
        );
        AccessClaims {
            groups: groups.iter().map(|g| g.to_string()).collect(),
            realm_access: Some(RoleList {
                roles: vec!["employee".into()],
            }),
            resource_access,
            ..AccessClaims::default()
        }
    }

    fn identity() -> Identity {
        Identity {
            subject: "sub-1".into(),
            username: Some("alice".into()),
            name: Some("Alice Able".into()),
            email: None,
        }
    }

    #[test]
    fn everyone_is_requester() {
        let user = current_user(identity(), &access(&[], &[]), "stint-portal", &config());
        assert_eq!(user.personas, vec![Persona::Requester]);
        assert_eq!(user.realm_roles, vec!["employee".to_owned()]);
        assert!(user.client_roles.is_empty());
    }

    #[test]
    fn group_paths_match_with_or_without_slash() {
        let user = current_user(
            identity(),
            &access(&["/stint-approvers", "stint-auditors"], &[]),
            "stint-portal",
            &config(),
        );
        assert!(user.is(Persona::Approver));
        assert!(user.is(Persona::Auditor));
        assert!(!user.is(Persona::Admin));
    }

    #[test]
    fn client_role_grants_persona() {
        let user = current_user(
            identity(),
            &access(&[], &["admin"]),
            "stint-portal",
            &config(),
        );
        assert!(user.is(Persona::Admin));
        assert!(!user.is(Persona::Approver));
    }

    #[test]
    fn roles_of_other_clients_do_not_count() {
        let user = current_user(identity(), &access(&[], &[]), "stint-portal", &config());
        assert!(!user.is(Persona::Admin));
    }

    #[test]
    fn subgroup_does_not_match_parent() {
        let user = current_user(
            identity(),
            &access(&["/stint-approvers/trainees"], &[]),
            "stint-portal",
            &config(),
        );
        assert!(!user.is(Persona::Approver));
    }

    #[test]
    fn unverified_payload_is_decoded() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"x","groups":["/a"]}"#);
        let claims: AccessClaims = decode_unverified(&format!("e30.{payload}.sig")).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("x"));
        assert_eq!(claims.groups, vec!["/a".to_owned()]);
        assert!(decode_unverified::<AccessClaims>("not-a-jwt").is_err());
    }
}
