//! ringpost: a durable, thread-per-core mail transfer agent on io_uring.

pub mod envelope;
pub mod policy;
pub mod smtp;
