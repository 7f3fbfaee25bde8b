pub mod home;
pub mod me;
pub mod not_found;
pub mod persona_pages;
pub mod signin_error;
