//! Types shared by sluice's kernel programs and its userspace.
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, and has explicit padding
//! fields so that no byte of it is left uninitialised (the kernel hashes keys
//! byte by byte). Sizes are asserted at compile time. Addresses and ports are
//! kept in network byte order exactly as they appear in a packet: a `u32`
//! address is the four address bytes read as a native-endian integer
//! (`u32::from_ne_bytes(octets)`), a `u16` port the two port bytes likewise.
//! Userspace converts with the constructors behind the `user` feature.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod drop;
pub mod maps;

pub use drop::DropReason;
pub use maps::*;

/// IP protocol numbers used in keys.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}
