//! The decision rules of an access request, as pure functions of the request's facts and a
//! time passed in, so they can be tested without a clock or a database.

use serde::{Deserialize, Serialize};

/// Status of a request. Only `Pending` can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
}

impl RequestStatus {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Approved,
        Self::Denied,
        Self::Expired,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Deny => "deny",
        }
    }
}

/// Facts about a request that the rules read.
#[derive(Clone, Debug)]
pub struct RequestFacts {
    pub requester_subject: String,
    pub status: RequestStatus,
    pub approvals_required: u32,
    /// Subjects of the approvers who approved so far.
    pub approved_by: Vec<String>,
    /// Unix seconds after which the request can no longer be approved.
    pub approval_deadline: i64,
}

/// A decision that the rules reject, with a message safe to show to the approver.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum DecisionError {
    #[error("you cannot decide your own request")]
    OwnRequest,
    #[error("you are not an approver of this role")]
    NotApprover,
    #[error("you already approved this request; another approver must decide")]
    AlreadyApproved,
    #[error("the request is already {}", .0.as_str())]
    AlreadyDecided(RequestStatus),
    #[error("the request expired before it was approved")]
    Expired,
}

/// The effect of an accepted decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The request's status after the decision: still pending until N approvals.
    pub status: RequestStatus,
    /// Distinct approvals after the decision.
    pub approvals: u32,
}

/// Applies `decision` by `approver` at `now` (Unix seconds). `approver_eligible` is whether
/// the approver belongs to the role's approvers right now, as Keycloak reports it.
pub fn decide(
    facts: &RequestFacts,
    approver: &str,
    approver_eligible: bool,
    decision: Decision,
    now: i64,
) -> Result<Outcome, DecisionError> {
    if facts.status != RequestStatus::Pending {
        return Err(DecisionError::AlreadyDecided(facts.status));
    }
    if is_expired(facts, now) {
        return Err(DecisionError::Expired);
    }
    if facts.requester_subject == approver {
        return Err(DecisionError::OwnRequest);
    }
    if !approver_eligible {
        return Err(DecisionError::NotApprover);
    }
    if facts.approved_by.iter().any(|subject| subject == approver) {
        return Err(DecisionError::AlreadyApproved);
    }
    let approvals = facts.approved_by.len() as u32;
    Ok(match decision {
        Decision::Deny => Outcome {
            status: RequestStatus::Denied,
            approvals,
        },
        Decision::Approve => {
            let approvals = approvals + 1;
            let status = if approvals >= facts.approvals_required {
                RequestStatus::Approved
            } else {
                RequestStatus::Pending
            };
            Outcome { status, approvals }
        }
    })
}

/// Returns whether a pending request has passed its approval deadline at `now`.
pub fn is_expired(facts: &RequestFacts, now: i64) -> bool {
    facts.status == RequestStatus::Pending && now >= facts.approval_deadline
}

/// Checks that `requester` may cancel the request.
pub fn cancel(facts: &RequestFacts, requester: &str) -> Result<(), CancelError> {
    if facts.requester_subject != requester {
        return Err(CancelError::NotYours);
    }
    if facts.status != RequestStatus::Pending {
        return Err(CancelError::NotPending(facts.status));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CancelError {
    #[error("only the requester can cancel a request")]
    NotYours,
    #[error("the request is already {}", .0.as_str())]
    NotPending(RequestStatus),
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn pending(required: u32, approved_by: &[&str]) -> RequestFacts {
        RequestFacts {
            requester_subject: "alice".into(),
            status: RequestStatus::Pending,
            approvals_required: required,
            approved_by: approved_by.iter().map(|s| s.to_string()).collect(),
            approval_deadline: NOW + 3600,
        }
    }

    #[test]
    fn single_approval_approves() {
        let outcome = decide(&pending(1, &[]), "bob", true, Decision::Approve, NOW).unwrap();
        assert_eq!(outcome.status, RequestStatus::Approved);
        assert_eq!(outcome.approvals, 1);
    }

    #[test]
    fn two_approvals_need_two_approvers() {
        let first = decide(&pending(2, &[]), "bob", true, Decision::Approve, NOW).unwrap();
        assert_eq!(first.status, RequestStatus::Pending);
        let second = decide(&pending(2, &["bob"]), "carol", true, Decision::Approve, NOW).unwrap();
        assert_eq!(second.status, RequestStatus::Approved);
        assert_eq!(second.approvals, 2);
    }

    #[test]
    fn approver_counts_once() {
        let error = decide(&pending(2, &["bob"]), "bob", true, Decision::Approve, NOW).unwrap_err();
        assert_eq!(error, DecisionError::AlreadyApproved);
    }

    #[test]
    fn self_approval_is_rejected() {
        let error = decide(&pending(1, &[]), "alice", true, Decision::Approve, NOW).unwrap_err();
        assert_eq!(error, DecisionError::OwnRequest);
    }

    #[test]
    fn self_denial_is_rejected() {
        let error = decide(&pending(1, &[]), "alice", true, Decision::Deny, NOW).unwrap_err();
        assert_eq!(error, DecisionError::OwnRequest);
    }

    #[test]
    fn one_denial_ends_request() {
        let outcome = decide(&pending(2, &["bob"]), "carol", true, Decision::Deny, NOW).unwrap();
        assert_eq!(outcome.status, RequestStatus::Denied);
    }

    #[test]
    fn expired_request_cannot_be_approved() {
        let facts = pending(1, &[]);
        let at_deadline = facts.approval_deadline;
        assert!(is_expired(&facts, at_deadline));
        assert!(!is_expired(&facts, at_deadline - 1));
        let error = decide(&facts, "bob", true, Decision::Approve, at_deadline).unwrap_err();
        assert_eq!(error, DecisionError::Expired);
    }

    #[test]
    fn decided_request_cannot_be_decided_again() {
        for status in [
            RequestStatus::Approved,
            RequestStatus::Denied,
            RequestStatus::Expired,
            RequestStatus::Cancelled,
        ] {
            let mut facts = pending(1, &[]);
            facts.status = status;
            let error = decide(&facts, "bob", true, Decision::Approve, NOW).unwrap_err();
            assert_eq!(error, DecisionError::AlreadyDecided(status));
        }
    }

    #[test]
    fn former_approver_cannot_decide() {
        let error = decide(&pending(1, &[]), "bob", false, Decision::Approve, NOW).unwrap_err();
        assert_eq!(error, DecisionError::NotApprover);
    }

    #[test]
    fn only_requester_cancels_pending() {
        assert!(cancel(&pending(1, &[]), "alice").is_ok());
        assert_eq!(cancel(&pending(1, &[]), "bob"), Err(CancelError::NotYours));
        let mut approved = pending(1, &[]);
        approved.status = RequestStatus::Approved;
        assert_eq!(
            cancel(&approved, "alice"),
            Err(CancelError::NotPending(RequestStatus::Approved))
        );
    }

    #[test]
    fn status_text_round_trips() {
        for status in [
            RequestStatus::Pending,
            RequestStatus::Approved,
            RequestStatus::Denied,
            RequestStatus::Expired,
            RequestStatus::Cancelled,
        ] {
            assert_eq!(RequestStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(RequestStatus::parse("granted"), None);
    }
}
