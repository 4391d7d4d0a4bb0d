//! Device <-> server wire types of Airlift.
#![no_std]
#![forbid(unsafe_code)]
