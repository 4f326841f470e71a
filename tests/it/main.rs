//! The integration tests, in one binary so that `common` is compiled once.
//!
//! - `fuse_suite`: FUSE-level behaviour, defined once, run over the in-memory store (always,
//!   in-process, no server) and over Ceph RGW (when `S3_ENDPOINT` is set, as `scripts/test.sh`
//!   does).
//! - the other modules need the real binary against RGW (and the stand-ins of the metadata
//!   server and STS, or a Docker engine); without `S3_ENDPOINT` they say they were skipped.

#[macro_use]
mod common;

mod container;
mod doctor;
mod errors;
mod faults;
mod federation;
mod federation_setup;
mod fuse_suite;
mod mount;
mod namespace;
mod ops;
mod run;
mod soak;
mod store_conformance;
