//! tollgate's egress proxy: policy engine, host normalisation,
//! internal-address guard, HTTP and CONNECT proxy, and audit log.
#![forbid(unsafe_code)]

pub mod audit;
mod client;
mod connect;
pub mod decision;
mod exchange;
mod forward;
pub mod guard;
pub mod host;
pub mod intercept;
pub mod policy;
pub mod respond;
pub mod server;
mod sniff;
mod tunnel;
pub mod upstream;

pub use intercept::Interception;
pub use server::{ListenAddr, Listener, Proxy, ProxyConfig};
