//! The runtime every hot path shares: which SIMD instructions this CPU has ([`cpu`]) and the one
//! global thread pool that parallel work runs on ([`pool`]).

pub mod cpu;
pub mod pool;
