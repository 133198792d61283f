//! Outbound delivery.

pub mod dsn;
pub mod route;
pub mod wheel;
