//! ipgate: decides, for every request, whether the client IP may pass.
#![forbid(unsafe_code)]

pub mod config;
pub mod lists;
pub mod policy;
pub mod reputation;

pub use config::Config;
