//! Integration tests of the server: the router driven in-process, and both database
//! backends. PostgreSQL tests run against `STINT_TEST_POSTGRES_URL`, a server URL whose
//! user may create databases; scripts/test.sh starts one.

mod audit;
mod catalog;
mod database;
mod fake_keycloak;
mod grants;
mod oidc;
mod probes;
mod requests;
mod support;
