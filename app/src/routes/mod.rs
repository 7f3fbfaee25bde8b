pub mod catalog;
pub mod home;
pub mod me;
pub mod not_found;
pub mod persona_pages;
pub mod request_new;
pub mod requests;
pub mod signin_error;
