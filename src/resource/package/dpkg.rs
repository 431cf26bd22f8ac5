//! Parser for the installed-package database (dpkg).
