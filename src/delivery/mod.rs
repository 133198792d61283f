//! Outbound delivery.

pub mod route;
pub mod wheel;
