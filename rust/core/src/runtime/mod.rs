//! The runtime every hot path shares: which SIMD instructions this CPU has ([`cpu`]) and the one
//! global thread pool that parallel work runs on ([`pool`]), and the memory check before large
//! buffers ([`mem`]).

pub mod cpu;
pub mod mem;
pub mod pool;
