//! ringlb: a thread-per-core io_uring load balancer (skeleton; modules land below).
//! Library root: each module documents which thread runs it and who owns its state.

pub mod http;
