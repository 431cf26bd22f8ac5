//! Parser for the installed-package database (rpm).
