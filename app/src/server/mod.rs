//! Server-only domain code: storage and rules that server functions and the server's
//! background jobs share. Compiled only with the `ssr` feature.

pub mod catalog;
pub mod db;
pub mod keycloak;
pub mod requests;
