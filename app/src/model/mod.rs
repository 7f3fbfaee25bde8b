//! Types shared by the server and the browser.

pub mod user;
