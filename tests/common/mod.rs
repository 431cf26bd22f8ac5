pub mod gitserver;
