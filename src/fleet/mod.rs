//! A fleet run from one repository: `fleet.yaml` (the hosts, their groups
//! and the rollout), the hosts' notes read back (`status`), promotion in
//! waves, and validation of every host's state before a merge.

pub mod config;
pub mod promote;
pub mod report;
pub mod secrets;
pub mod status;
pub mod tips;
pub mod validate;

pub use status::{HostRow, age, fleet_status, render_table, row};
