//! ESP-IDF on-flash formats and Airlift's signed update manifest.
//!
//! Pure functions over bytes: no I/O, no allocation, no `unsafe`. Every parser
//! returns a typed error for malformed input and never panics.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

pub mod image;
pub mod manifest;
pub mod otadata;
pub mod partition;
