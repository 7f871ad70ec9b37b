pub mod ca;
pub mod policy;
pub mod proxy;
