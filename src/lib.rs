//! trueup: keeps plain Linux servers true to a Git branch.
//!
//! One run goes source → render → desired state → observe → plan → apply →
//! report. The pure core (spec parsing, rendering, diffing, planning, report
//! formats) does no I/O; everything that touches the machine sits in
//! `resource`, `source`, `apply` and `agent`.

pub mod agent;
pub mod apply;
pub mod backup;
pub mod commands;
pub mod config;
pub mod desired;
pub mod error_class;
pub mod facts;
pub mod fleet;
pub mod health;
pub mod loader;
pub mod lock;
pub mod pipeline;
pub mod plan;
pub mod prestage;
pub mod render_cache;
pub mod report;
pub mod resource;
pub mod safe_fs;
pub mod secrets;
pub mod source;
pub mod spec;
pub mod state;
pub mod wildcard;
