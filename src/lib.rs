//! ringlb: a thread-per-core io_uring load balancer (skeleton; modules land below).
pub mod config;
