//! Unit tests of the config loader: parsing, defaults and every validation message with its
//! line. Run by `cargo test` on the test thread; each test owns its temp files.
use super::*;
