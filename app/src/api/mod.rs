//! Server functions, grouped by domain. Each checks its caller before it reads anything.

pub mod audit;
pub mod requests;
