//! Wraps `systemctl show` and parses its output.
