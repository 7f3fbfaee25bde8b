//! Server-only domain code: storage and rules that server functions and the server's
//! background jobs share. Compiled only with the `ssr` feature.

pub mod audit;
pub mod catalog;
pub mod db;
pub mod grants;
pub mod keycloak;
pub mod requests;

/// Formats Unix seconds as `2026-12-04 17:30 UTC`, or as the bare number when out of range.
pub fn format_time(seconds: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|at| at.format(&format).ok())
        .unwrap_or_else(|| seconds.to_string())
}
