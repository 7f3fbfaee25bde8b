//! Grants: the time-boxed role mappings that approved requests become, the scheduler that
//! applies and removes them in Keycloak, and the reconciliation that compares the two.

pub mod mappings;
pub mod reconcile;
pub mod scheduler;
pub mod store;
