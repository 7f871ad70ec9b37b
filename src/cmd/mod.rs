pub mod audit;
pub mod ca;
pub mod cache;
pub mod exec;
pub mod policy;
pub mod proxy;
pub mod run;
