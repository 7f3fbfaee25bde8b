pub mod hydration;
pub mod layout;
