//! The SMTP protocol core. No I/O, no clock: bytes and time in, replies and
//! events out. Only the worker shell (`rt`) drives it over sockets.

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod params;
pub mod reply;
pub mod session;
