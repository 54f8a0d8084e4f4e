//! Builds the pingora server from a validated [`Config`]: lifecycle settings and the services.

use std::path::PathBuf;
use std::sync::Arc;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::admin::auth::Authenticator;
use crate::admin::throttle::Throttle;
use crate::admin::{AdminService, AdminState};
use crate::config::Config;
use crate::proxy::Proxy;
use crate::snapshot::{Refresher, SnapshotHandle};

/// Options of `mtls-gateway run` that pingora itself acts on.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Take the listening sockets over from a running instance (`run --upgrade`).
    pub upgrade: bool,
    /// The configuration file, watched for changes to the static mappings.
    pub config_path: Option<PathBuf>,
}

/// The server with its three services; `Err` when credentials named in the configuration
/// cannot be read.
pub fn build(config: &Config, options: RunOptions) -> Result<Server, String> {
    let auth = Arc::new(Authenticator::new(&config.auth)?);
    let runtime_dir = config.lifecycle.runtime_dir.trim_end_matches('/');
    // The pid file and the upgrade socket live here; `run --upgrade` fails without it.
    std::fs::create_dir_all(runtime_dir)
        .map_err(|e| format!("cannot create lifecycle.runtime_dir {runtime_dir}: {e}"))?;
    let conf = ServerConf {
        grace_period_seconds: Some(config.lifecycle.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(config.lifecycle.shutdown_timeout_seconds),
        threads: config.lifecycle.threads,
        pid_file: format!("{runtime_dir}/mtls-gateway.pid"),
        upgrade_sock: format!("{runtime_dir}/upgrade.sock"),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let snapshot = Arc::new(SnapshotHandle::default());
    let refresher = Refresher::new(Arc::clone(&snapshot), config, options.config_path);
    let refresher = server.add_service(background_service("snapshot refresher", refresher));

    let admin = AdminState {
        snapshot: Arc::clone(&snapshot),
        auth: Arc::clone(&auth),
        throttle: Arc::new(Throttle::new(&config.admin.throttle)),
        config: Arc::new(config.admin.clone()),
        upstream: Arc::new(config.upstream.clone()),
        expires_soon_days: config.p12.expires_soon_days,
        bound: Arc::new(std::sync::OnceLock::new()),
    };
    let admin_address = Arc::clone(&admin.bound);
    server.add_service(background_service("admin", AdminService { state: admin }));

    let proxy = Proxy::new(
        snapshot,
        config.proxy.clone(),
        config.upstream.clone(),
        auth,
        admin_address,
    );
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    proxy.add_tcp(&config.proxy.listen.to_string());
    // No request is served before the first snapshot is loaded.
    server.add_service(proxy).add_dependency(&refresher);
    Ok(server)
}
