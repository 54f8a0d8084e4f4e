//! Building a forwarding snapshot from the local store holding `BENCH_CERTS` certificates
//! (default 10 000), each with one mapping.
//!
//! Set-up (once per run, timed and printed): one EC P-256 P12 made with openssl, stored
//! `BENCH_CERTS` times under different names (each upload runs the full diagnosis, as the
//! admin API does) over 100 accounts, one mapping each with the partner CA bundle. The store
//! lives on /dev/shm when it exists, so the figures are decoding and bookkeeping, not fsync.
//!
//! Measured:
//! - `cold`: a new `Builder`, so every certificate is read and decoded (what a gateway does at
//!   start); timed by hand, 3 runs, since one run takes seconds;
//! - `warm`: a rebuild by the same `Builder` after a revision change, certificates from its
//!   cache (what each store change costs a running gateway); criterion.
//!
//! `cargo bench --bench snapshot_build`; `BENCH_CERTS=2000 cargo bench --bench snapshot_build`

#![allow(
    missing_docs,
    reason = "criterion's macros generate undocumented items"
)]
#![allow(
    clippy::print_stdout,
    reason = "the set-up timings are part of the bench output"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mtls_gateway::ids::{AccountId, EntryName, ServiceName};
use mtls_gateway::snapshot::Builder;
use mtls_gateway::store::{LocalConfig, LocalStore, MappingSpec, NewCertificate, Store, UrlMatch};

mod common;

/// `BENCH_CERTS`, default 10 000; 20 when `cargo test --all-targets` runs the bench as a test
/// (without `--bench`), so that `make test` stays quick.
fn certificates() -> usize {
    if !std::env::args().any(|a| a == "--bench") {
        return 20;
    }
    std::env::var("BENCH_CERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn build(c: &mut Criterion) {
    let n = certificates();
    let files = common::p12_files();
    let ca_pem = String::from_utf8(files.ca_pem.clone()).expect("PEM is text");
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let store: Arc<dyn Store> = runtime.block_on(async {
        let config = LocalConfig {
            path: dir.path().join("store"),
        };
        let store = LocalStore::open(&config).await.expect("local store");
        let started = Instant::now();
        for i in 0..n {
            let account = AccountId::new(format!("account{}", i % 100)).expect("account");
            let new = NewCertificate {
                account: account.clone(),
                name: EntryName::new(format!("cert{i}")).expect("name"),
                p12: common::usable(&files.ec_modern),
            };
            let record = store
                .create_certificate(new)
                .await
                .expect("certificate stored");
            let spec = MappingSpec {
                name: EntryName::new(format!("map{i}")).expect("name"),
                service: ServiceName::new("PAYMENTS").expect("service"),
                url: format!("https://partner{}.example:8443/api/v1/resource{i}", i % 100),
                certificate_id: record.id,
                enabled: true,
                url_match: UrlMatch::Exact,
                ca_pem: Some(ca_pem.clone()),
                verify_server: true,
            };
            store
                .create_mapping(&account, spec)
                .await
                .expect("mapping stored");
        }
        println!(
            "set-up: {n} certificates and {n} mappings stored in {:.1} s (store in {})",
            started.elapsed().as_secs_f64(),
            dir.path().display()
        );
        Arc::new(store) as Arc<dyn Store>
    });

    let mut cold = Vec::new();
    for _ in 0..3 {
        let builder = Builder::new(Arc::clone(&store), 30);
        let started = Instant::now();
        let snapshot = runtime.block_on(builder.build(&[])).expect("snapshot");
        cold.push(started.elapsed());
        assert_eq!(
            snapshot.len(),
            n,
            "every mapping loads: {:?}",
            snapshot.skipped.first()
        );
    }
    cold.sort();
    println!(
        "snapshot_build/cold/{n}: min {:.2} s, median {:.2} s, max {:.2} s \
         ({:.0} µs per certificate)",
        cold[0].as_secs_f64(),
        cold[1].as_secs_f64(),
        cold[2].as_secs_f64(),
        cold[1].as_secs_f64() * 1e6 / n as f64
    );

    let builder = Builder::new(Arc::clone(&store), 30);
    runtime
        .block_on(builder.build(&[]))
        .expect("first build fills the cache");
    let mut group = c.benchmark_group("snapshot_build");
    group.sample_size(10);
    group.bench_function(format!("warm/{n}"), |b| {
        b.iter(|| {
            runtime
                .block_on(builder.build(&[]))
                .expect("snapshot")
                .len()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = build
}
criterion_main!(benches);
