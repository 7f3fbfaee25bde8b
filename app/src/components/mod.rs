pub mod flash;
pub mod guard;
pub mod hydration;
pub mod layout;
