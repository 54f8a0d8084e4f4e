//! Decoding and judging one P12 file (`p12::diagnose`), modern and legacy encryption, EC P-256
//! and RSA 2048 keys, as an upload or a snapshot build does it.
//!
//! `cargo bench --bench p12_decode`

#![allow(
    missing_docs,
    reason = "criterion's macros generate undocumented items"
)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mtls_gateway::p12::{self, DiagnosisPolicy};
use secrecy::SecretString;

mod common;

fn decode(c: &mut Criterion) {
    let files = common::p12_files();
    let policy = DiagnosisPolicy::default();
    let mut group = c.benchmark_group("p12_diagnose");
    for (name, der) in [
        ("ec-p256/modern", &files.ec_modern),
        ("ec-p256/legacy", &files.ec_legacy),
        ("rsa2048/modern", &files.rsa_modern),
        ("rsa2048/legacy", &files.rsa_legacy),
    ] {
        // Fail loudly if a fixture is not usable: a refusal would be a much cheaper path.
        common::usable(der);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let diagnosis =
                    p12::diagnose(der.clone(), SecretString::from(common::PASSWORD), &policy);
                diagnosis.report.verdict
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
    targets = decode
}
criterion_main!(benches);
