//! s3-oidc-mount: mount an S3 bucket prefix as a read-mostly directory, with credentials
//! from the workload's identity (no AWS keys). See docs/ and ../README.md.

pub mod advice;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod fs;
pub mod fuse;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod run;
pub mod store;
pub mod user;
pub mod util;
