pub mod policy;
pub mod proxy;
