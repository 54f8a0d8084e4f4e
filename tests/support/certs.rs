//! Real, usable P12 files made with the `openssl` CLI at test time.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use mtls_gateway::p12::{diagnose, DiagnosisPolicy, UsableP12};
use secrecy::SecretString;

/// Random lowercase hex from the kernel: passwords, tokens and unique names in tests.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .expect("read /dev/urandom");
    hex::encode(buffer)
}

/// Makes a self-signed EC P-256 client certificate (`extendedKeyUsage=clientAuth`) for `cn`
/// in `dir` and exports it with `openssl pkcs12 -export`; returns the file and its password.
pub fn make_p12(dir: &Path, cn: &str) -> (Vec<u8>, String) {
    static FILES: AtomicU64 = AtomicU64::new(0);
    let stem = dir.join(format!("p12-{}", FILES.fetch_add(1, Ordering::Relaxed)));
    let (key, certificate, p12) = (
        stem.with_extension("key"),
        stem.with_extension("crt"),
        stem.with_extension("p12"),
    );
    let password = random_hex(12);

    let mut request = Command::new("openssl");
    request
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "365"])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .args(["-addext", "keyUsage=critical,digitalSignature"])
        .args(["-addext", "extendedKeyUsage=clientAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&certificate);
    run(&mut request);

    let mut export = Command::new("openssl");
    export
        .args(["pkcs12", "-export", "-inkey"])
        .arg(&key)
        .arg("-in")
        .arg(&certificate)
        .arg("-out")
        .arg(&p12)
        .arg("-passout")
        .arg(format!("pass:{password}"));
    run(&mut export);

    let der = std::fs::read(&p12).expect("read the p12 openssl wrote");
    (der, password)
}

/// The diagnosis's verdict on a P12 the test made; panics unless it is usable.
pub fn usable(der: &[u8], password: &str) -> UsableP12 {
    let diagnosis = diagnose(
        der.to_vec(),
        SecretString::from(password),
        &DiagnosisPolicy::default(),
    );
    diagnosis
        .into_usable()
        .unwrap_or_else(|report| panic!("openssl made a p12 the diagnosis refuses: {report:?}"))
}

/// A fresh usable P12 for `cn`, with the file and password it came from.
pub fn make_usable(dir: &Path, cn: &str) -> (UsableP12, Vec<u8>, String) {
    let (der, password) = make_p12(dir, cn);
    (usable(&der, &password), der, password)
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .expect("run openssl: install the openssl command-line tool");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
