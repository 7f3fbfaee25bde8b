//! Access requests: the rules that decide them, and their storage with the audit log.

pub mod rules;
pub mod store;
pub mod validate;
