//! Airlift's device update engine.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;
