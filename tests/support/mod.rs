//! Helpers shared by the integration tests. Each test binary uses a different part of them.
#![allow(dead_code, reason = "each test binary uses only some helpers")]
#![allow(
    unreachable_pub,
    reason = "helpers are pub for the test binaries that include them"
)]

pub mod admin;
pub mod certs;
pub mod fixtures;
pub mod gateway;
pub mod openbao;
pub mod partner;
pub mod pki;
