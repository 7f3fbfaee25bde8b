//! The audit log: its hash chain, and the history that auditors browse and export.

pub mod chain;
pub mod export;
pub mod history;
