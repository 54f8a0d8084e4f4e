//! Snapshot lookup with 1 000 and 100 000 mappings, exact and prefix matches.
//!
//! `cargo bench --bench lookup`

#![allow(
    missing_docs,
    reason = "criterion's macros generate undocumented items"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mtls_gateway::store::UrlMatch;

mod common;

fn lookup(c: &mut Criterion) {
    let files = common::p12_files();
    let cert_key = common::cert_key(&common::usable(&files.ec_modern));
    let trust = common::trust(&files.ca_pem);

    let mut group = c.benchmark_group("snapshot_lookup");
    for n in [1_000, 100_000] {
        for (kind, url_match) in [("exact", UrlMatch::Exact), ("prefix", UrlMatch::Prefix)] {
            let snapshot = common::snapshot(n, url_match, &cert_key, &trust);
            // 1 024 different requests, spread over the whole snapshot, visited in turn.
            let requests: Vec<(String, String)> = (0..1024)
                .map(|k| common::request_url(k * (n / 1024).max(1) % n, url_match))
                .collect();
            let mut next = 0usize;
            group.bench_function(BenchmarkId::new(kind, n), |b| {
                b.iter(|| {
                    let (account, url) = &requests[next % requests.len()];
                    next += 1;
                    let found = snapshot.lookup(black_box(account), "PAYMENTS", black_box(url));
                    assert!(found.is_some());
                    found.map(|(binding, _)| binding.group_key)
                })
            });
        }
        // A miss: known account and service, unknown URL with four path segments.
        let snapshot = common::snapshot(n, UrlMatch::Prefix, &cert_key, &trust);
        group.bench_function(BenchmarkId::new("miss_prefix", n), |b| {
            b.iter(|| {
                snapshot.lookup(
                    black_box("account7"),
                    "PAYMENTS",
                    black_box("https://partner7.example:8443/api/v2/other/thing?x=1"),
                )
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = lookup
}
criterion_main!(benches);
