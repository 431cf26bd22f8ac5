//! Resources: what trueup manages on a host, how each is observed and changed.

pub mod package;
pub mod service;
