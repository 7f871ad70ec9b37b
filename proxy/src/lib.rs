//! tollgate's egress proxy: policy engine, host normalisation,
//! internal-address guard, HTTP and CONNECT proxy, and audit log.
#![forbid(unsafe_code)]

pub mod audit;
pub mod chain;
mod client;
mod clients;
mod config;
mod connect;
mod context;
pub mod decision;
mod exchange;
mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod guard;
mod hello;
pub mod host;
mod intercept;
mod listen;
pub mod metrics;
pub mod policy;
pub mod respond;
mod retry;
mod server;
mod sniff;
mod target;
mod tunnel;
pub mod upstream;

pub use config::{Interception, ProxyConfig};
pub use listen::{ListenAddr, ListenError, Listener};
pub use server::Proxy;
