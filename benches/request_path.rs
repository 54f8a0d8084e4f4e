//! The per-request work outside I/O: identification, snapshot lookup and upstream peer
//! construction for one HTTP-proxy-mode request.
//!
//! `Proxy::identify` and `Proxy::peer` are private, so this bench replays their public parts in
//! the same order: pingora's absolute-form target split, the `https://` URL, `Target::parse`,
//! the account and service headers, the header-map copy `authenticate` makes, the snapshot
//! lookup, `HttpPeer` with the binding's certificate, CA and pool key, and the pool key hash
//! pingora computes to find a pooled connection. Left out: HTTP parsing, the (disabled)
//! authenticator, throttling, metrics, logging, and the partner name resolution, which has its
//! own bench below (`upstream_peer` resolves the host with `tokio::net::lookup_host` on every
//! request).
//!
//! `cargo bench --bench request_path`

#![allow(
    missing_docs,
    reason = "criterion's macros generate undocumented items"
)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use mtls_gateway::proxy::Target;
use mtls_gateway::snapshot::Binding;
use mtls_gateway::store::UrlMatch;
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::prelude::{HttpPeer, RequestHeader};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::Peer;

mod common;

fn request(i: usize) -> RequestHeader {
    let a = i % 100;
    let path = format!("http://partner{a}.example:8443/api/v1/resource{i}?q=1");
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).expect("request");
    req.insert_header("host", format!("partner{a}.example:8443"))
        .expect("host");
    req.insert_header("x-mtls-account", format!("account{a}"))
        .expect("account");
    req.insert_header("x-mtls-service", "PAYMENTS")
        .expect("service");
    req.insert_header("user-agent", "bench/1.0")
        .expect("user-agent");
    req.insert_header("accept", "*/*").expect("accept");
    req
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// What `identify_proxied` and `authenticate` compute before the lookup.
fn identify(req: &RequestHeader) -> (Target, String, String) {
    let RawTargetAuthority::Absolute {
        authority,
        path_and_query,
        ..
    } = raw_target_authority(req.raw_path())
    else {
        panic!("absolute-form request");
    };
    let url = format!(
        "https://{}{}",
        String::from_utf8_lossy(authority),
        String::from_utf8_lossy(path_and_query)
    );
    let target = Target::parse(&url).expect("target");
    let account = header(req, "x-mtls-account")
        .map(str::to_owned)
        .expect("account");
    let service = header(req, "x-mtls-service")
        .map(str::to_owned)
        .expect("service");
    // `authenticate` copies the header map and formats the URL it would sign, every request.
    let headers = black_box(req.headers.clone());
    let host = header(req, "host").unwrap_or_default();
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    black_box(format!("http://{host}{path}"));
    drop(headers);
    (target, account, service)
}

/// What `Proxy::peer` builds, with the default upstream timeouts.
fn peer(addr: SocketAddr, target: &Target, binding: &Binding) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, true, target.sni.clone());
    let options = &mut peer.options;
    options.connection_timeout = Some(Duration::from_millis(5_000));
    options.total_connection_timeout = Some(Duration::from_millis(10_000));
    options.read_timeout = Some(Duration::from_millis(60_000));
    options.write_timeout = Some(Duration::from_millis(60_000));
    options.idle_timeout = Some(Duration::from_millis(60_000));
    options.alpn = ALPN::H2H1;
    peer.client_cert_key = Some(Arc::clone(&binding.cert_key));
    peer.options.ca = binding.trust.ca.clone();
    peer.options.verify_cert = binding.verify_server;
    peer.options.verify_hostname = binding.verify_server;
    peer.group_key = binding.group_key;
    peer
}

fn request_path(c: &mut Criterion) {
    let files = common::p12_files();
    let cert_key = common::cert_key(&common::usable(&files.ec_modern));
    let trust = common::trust(&files.ca_pem);
    let snapshot = common::snapshot(100_000, UrlMatch::Exact, &cert_key, &trust);
    let requests: Vec<RequestHeader> = (0..1024).map(|k| request(k * 97)).collect();
    let addr: SocketAddr = "127.0.0.1:8443".parse().expect("addr");

    let mut group = c.benchmark_group("request_path");
    let mut next = 0usize;
    group.bench_function("target_parse", |b| {
        b.iter(|| {
            Target::parse(black_box(
                "https://partner7.example:8443/api/v1/resource7?q=1",
            ))
        })
    });
    group.bench_function("identify", |b| {
        b.iter(|| {
            next += 1;
            identify(&requests[next % requests.len()])
        })
    });
    group.bench_function("identify+lookup+peer (100k mappings)", |b| {
        b.iter(|| {
            next += 1;
            let (target, account, service) = identify(&requests[next % requests.len()]);
            let (binding, _) = snapshot
                .lookup(&account, &service, &target.url)
                .expect("mapped");
            let peer = peer(addr, &target, binding);
            peer.reuse_hash()
        })
    });
    let (target, account, service) = identify(&requests[0]);
    let binding = Arc::clone(
        snapshot
            .lookup(&account, &service, &target.url)
            .expect("mapped")
            .0,
    );
    group.bench_function("peer+reuse_hash", |b| {
        b.iter(|| peer(addr, &target, &binding).reuse_hash())
    });

    // The name resolution `upstream_peer` does per request (getaddrinfo on tokio's blocking
    // pool), for "localhost" from /etc/hosts: no network involved.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    group.bench_function("lookup_host(localhost)", |b| {
        b.iter(|| {
            runtime.block_on(async {
                tokio::net::lookup_host(("localhost", 8443))
                    .await
                    .expect("resolves")
                    .next()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = request_path
}
criterion_main!(benches);
