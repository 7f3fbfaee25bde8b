//! Checks of a submitted request form against the catalog entry, with one message per
//! field that names the limit and the value.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::server::catalog::CatalogRole;

/// Maximum length of a justification, in characters.
pub const MAX_JUSTIFICATION: usize = 2000;
/// Maximum length of a ticket reference, in characters.
pub const MAX_TICKET: usize = 64;
/// How far ahead a start time may lie.
pub const MAX_START_AHEAD: Duration = Duration::from_secs(30 * 24 * 3600);
/// A start time this far in the past still counts as "now", for slow form submissions.
const START_GRACE: i64 = 300;

/// The form as submitted, all text.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestForm {
    pub role: String,
    pub duration: String,
    /// Empty for "now", else `YYYY-MM-DDTHH:MM` in UTC as a `datetime-local` input sends it.
    /// The extension form has no such field.
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub justification: String,
    #[serde(default)]
    pub ticket: String,
    /// Id of the active grant this request extends; empty for a new grant.
    #[serde(default)]
    pub extends: String,
}

/// Field errors keyed by form field name.
pub type FieldErrors = BTreeMap<String, String>;

/// The request after every check passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidRequest {
    pub duration_seconds: i64,
    pub starts_at: Option<i64>,
    pub justification: String,
    pub ticket: Option<String>,
}

fn human(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Returns `text` as an error message quotes it: the first 40 characters, and an ellipsis
/// when there are more.
fn shown(text: &str) -> String {
    const SHOWN_CHARACTERS: usize = 40;
    match text.char_indices().nth(SHOWN_CHARACTERS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn has_control_characters(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
}

/// Checks `form` for `role` at `now` (Unix seconds).
pub fn validate(
    form: &RequestForm,
    role: &CatalogRole,
    now: i64,
) -> Result<ValidRequest, FieldErrors> {
    let mut errors = FieldErrors::new();
    let key = &role.key;

    let duration_text = shown(form.duration.trim());
    let duration = match humantime::parse_duration(form.duration.trim()) {
        Ok(duration) if duration.is_zero() => {
            errors.insert(
                "duration".into(),
                "the duration must be longer than zero".into(),
            );
            None
        }
        // Grants are stored in whole seconds, so a fraction would be cut off silently.
        Ok(duration) if duration.as_secs() == 0 || duration.subsec_nanos() != 0 => {
            errors.insert(
                "duration".into(),
                format!(
                    "`{duration_text}` is not a whole number of seconds: ask for at least 1s, in whole seconds, like 90s, 30m or 2h"
                ),
            );
            None
        }
        Ok(duration) if duration > role.max_duration => {
            errors.insert(
                "duration".into(),
                format!(
                    "{key} allows at most {}; you asked for {}",
                    human(role.max_duration),
                    human(duration)
                ),
            );
            None
        }
        Ok(duration) => Some(duration),
        Err(_) => {
            errors.insert(
                "duration".into(),
                format!("`{duration_text}` is not a duration: write it like 30m, 2h or 1h 30m"),
            );
            None
        }
    };

    let starts_at = if form.starts_at.trim().is_empty() {
        None
    } else {
        let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
        match time::PrimitiveDateTime::parse(form.starts_at.trim(), &format) {
            Ok(local) => {
                let at = local.assume_utc().unix_timestamp();
                if at < now - START_GRACE {
                    errors.insert(
                        "starts_at".into(),
                        "the start time lies in the past: choose a later time or start now".into(),
                    );
                } else if at > now + MAX_START_AHEAD.as_secs() as i64 {
                    errors.insert(
                        "starts_at".into(),
                        format!(
                            "the start time lies more than {} ahead",
                            human(MAX_START_AHEAD)
                        ),
                    );
                }
                Some(at.max(now))
            }
            Err(_) => {
                errors.insert(
                    "starts_at".into(),
                    "the start time must look like 2026-12-24T09:00 (UTC)".into(),
                );
                None
            }
        }
    };

    let justification = form.justification.trim().to_owned();
    if role.justification_required && justification.is_empty() {
        errors.insert(
            "justification".into(),
            format!("{key} requires a justification: say what you need the role for"),
        );
    } else if justification.chars().count() > MAX_JUSTIFICATION {
        errors.insert(
            "justification".into(),
            format!(
                "the justification has {} characters; the maximum is {MAX_JUSTIFICATION}",
                justification.chars().count()
            ),
        );
    } else if has_control_characters(&justification) {
        errors.insert(
            "justification".into(),
            "the justification contains control characters: remove them".into(),
        );
    }

    let ticket = form.ticket.trim().to_owned();
    if ticket.is_empty() {
        if role.ticket_required {
            errors.insert(
                "ticket".into(),
                format!("{key} requires a ticket reference"),
            );
        }
    } else if ticket.chars().count() > MAX_TICKET || has_control_characters(&ticket) {
        errors.insert(
            "ticket".into(),
            format!("a ticket reference has at most {MAX_TICKET} printable characters"),
        );
    } else if let Some(pattern) = &role.ticket_pattern {
        if !pattern.is_match(&ticket) {
            errors.insert(
                "ticket".into(),
                format!(
                    "ticket `{ticket}` does not match the pattern {} that {key} requires",
                    pattern.as_str()
                ),
            );
        }
    }

    match (errors.is_empty(), duration) {
        (true, Some(duration)) => Ok(ValidRequest {
            duration_seconds: duration.as_secs() as i64,
            starts_at,
            justification,
            ticket: (!ticket.is_empty()).then_some(ticket),
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::catalog::Catalog;

    const NOW: i64 = 1_800_000_000;

    fn role() -> CatalogRole {
        let text = r#"
[[role]]
key = "db-admin"
realm_role = "db-admin"
display_name = "Database administrator"
default_duration = "1h"
max_duration = "4h"
approvers.groups = ["/db-approvers"]
ticket_required = true
ticket_pattern = "^[A-Z]+-[0-9]+$"
"#;
        Catalog::parse(text, "test").unwrap().roles.remove(0)
    }

    fn form() -> RequestForm {
        RequestForm {
            role: "db-admin".into(),
            duration: "2h".into(),
            starts_at: String::new(),
            justification: "restore the orders table".into(),
            ticket: "OPS-42".into(),
            extends: String::new(),
        }
    }

    fn errors(form: RequestForm) -> FieldErrors {
        validate(&form, &role(), NOW).unwrap_err()
    }

    #[test]
    fn valid_form_passes() {
        let valid = validate(&form(), &role(), NOW).unwrap();
        assert_eq!(valid.duration_seconds, 7200);
        assert_eq!(valid.starts_at, None);
        assert_eq!(valid.ticket.as_deref(), Some("OPS-42"));
    }

    #[test]
    fn duration_over_maximum_names_limit() {
        let found = errors(RequestForm {
            duration: "8h".into(),
            ..form()
        });
        assert_eq!(
            found["duration"],
            "db-admin allows at most 4h; you asked for 8h"
        );
    }

    #[test]
    fn zero_and_garbage_durations_are_rejected() {
        assert!(errors(RequestForm {
            duration: "0m".into(),
            ..form()
        })["duration"]
            .contains("longer than zero"));
        assert!(errors(RequestForm {
            duration: "soon".into(),
            ..form()
        })["duration"]
            .contains("not a duration"));
    }

    #[test]
    fn fractional_durations_are_rejected() {
        for text in ["500ms", "1ns", "1500ms"] {
            let found = errors(RequestForm {
                duration: text.into(),
                ..form()
            });
            assert_eq!(
                found["duration"],
                format!("`{text}` is not a whole number of seconds: ask for at least 1s, in whole seconds, like 90s, 30m or 2h"),
                "{text}"
            );
        }
        let valid = validate(
            &RequestForm {
                duration: "2000ms".into(),
                ..form()
            },
            &role(),
            NOW,
        )
        .unwrap();
        assert_eq!(valid.duration_seconds, 2);
    }

    #[test]
    fn long_duration_text_is_shortened() {
        let found = errors(RequestForm {
            duration: "x".repeat(5000),
            ..form()
        });
        assert_eq!(
            found["duration"],
            format!(
                "`{}…` is not a duration: write it like 30m, 2h or 1h 30m",
                "x".repeat(40)
            )
        );
    }

    #[test]
    fn start_in_past_or_far_future_is_rejected() {
        let past = errors(RequestForm {
            starts_at: "2020-01-01T00:00".into(),
            ..form()
        });
        assert!(past["starts_at"].contains("in the past"));
        let far = errors(RequestForm {
            starts_at: "2099-01-01T00:00".into(),
            ..form()
        });
        assert!(far["starts_at"].contains("ahead"));
        let bad = errors(RequestForm {
            starts_at: "tomorrow".into(),
            ..form()
        });
        assert!(bad["starts_at"].contains("2026-12-24T09:00"));
    }

    #[test]
    fn future_start_is_kept() {
        // 2027-01-15T12:00 UTC lies within 30 days of NOW (2027-01-15T08:00 UTC).
        let valid = validate(
            &RequestForm {
                starts_at: "2027-01-15T12:00".into(),
                ..form()
            },
            &role(),
            NOW,
        )
        .unwrap();
        assert_eq!(valid.starts_at, Some(NOW + 4 * 3600));
    }

    #[test]
    fn ticket_rules() {
        assert!(errors(RequestForm {
            ticket: String::new(),
            ..form()
        })["ticket"]
            .contains("requires a ticket"));
        let mismatch = errors(RequestForm {
            ticket: "ops-1".into(),
            ..form()
        });
        assert_eq!(
            mismatch["ticket"],
            "ticket `ops-1` does not match the pattern ^[A-Z]+-[0-9]+$ that db-admin requires"
        );
        assert!(errors(RequestForm {
            ticket: format!("OPS-{}", "1".repeat(80)),
            ..form()
        })["ticket"]
            .contains("at most 64"));
    }

    #[test]
    fn justification_rules() {
        assert!(errors(RequestForm {
            justification: "  ".into(),
            ..form()
        })["justification"]
            .contains("requires a justification"));
        let long = "x".repeat(MAX_JUSTIFICATION + 1);
        assert!(errors(RequestForm {
            justification: long,
            ..form()
        })["justification"]
            .contains("maximum is 2000"));
        assert!(errors(RequestForm {
            justification: "a\u{0007}b".into(),
            ..form()
        })["justification"]
            .contains("control characters"));
        let html = validate(
            &RequestForm {
                justification: "<script>alert(1)</script>".into(),
                ..form()
            },
            &role(),
            NOW,
        )
        .unwrap();
        assert_eq!(
            html.justification, "<script>alert(1)</script>",
            "text is stored as typed and escaped on output"
        );
    }

    #[test]
    fn several_errors_are_reported_together() {
        let found = errors(RequestForm {
            duration: "9h".into(),
            ticket: String::new(),
            ..form()
        });
        assert_eq!(found.len(), 2);
    }
}
