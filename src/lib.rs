//! mtls-gateway: an egress gateway that presents a client certificate chosen per account,
//! service and target URL. See `DESIGN.md` for the flow; each module owns one concern.

pub mod admin;
pub mod config;
pub mod ids;
pub mod metrics;
pub mod p12;
pub mod proxy;
pub mod server;
pub mod snapshot;
pub mod store;
