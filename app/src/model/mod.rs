//! Types shared by the server and the browser.

pub mod request;
pub mod user;
