//! Service resources, driven through systemd.

pub mod systemctl;
