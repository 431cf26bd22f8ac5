//! Package resources: the backend (apt or dnf) chosen from os-release.

pub mod dpkg;
pub mod rpm;
