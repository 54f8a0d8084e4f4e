//! Fixtures shared by the micro-benchmarks: real PKCS#12 files made with `openssl` at bench
//! start, and snapshot bindings that share one decoded client identity.

#![allow(dead_code, reason = "each bench uses a part of the shared fixtures")]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use secrecy::SecretString;

use mtls_gateway::ids::{AccountId, Fingerprint, ServiceName};
use mtls_gateway::p12::{self, DiagnosisPolicy, UsableP12};
use mtls_gateway::snapshot::{Binding, Origin, PresentedCertificate, Snapshot, Trust};
use mtls_gateway::store::UrlMatch;

pub(crate) const PASSWORD: &str = "changeit-42";

/// P12 files for one EC P-256 and one RSA 2048 client identity, modern and legacy encryption.
pub(crate) struct P12Files {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ec_modern: Vec<u8>,
    pub(crate) ec_legacy: Vec<u8>,
    pub(crate) rsa_modern: Vec<u8>,
    pub(crate) rsa_legacy: Vec<u8>,
    /// The self-signed CA that issued the leaves, PEM: the partner trust bundle in the benches.
    pub(crate) ca_pem: Vec<u8>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(std::env::var("OPENSSL").unwrap_or_else(|_| "openssl".into()))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes the P12 files with `openssl` 3 (modern: PBES2 AES-256-CBC, PBKDF2 and a SHA-256 MAC
/// with 2048 iterations, openssl's defaults; legacy: `-legacy`, RC2-40 / 3DES and a SHA-1 MAC).
pub(crate) fn p12_files() -> P12Files {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "400",
            "-subj",
            "/CN=Bench CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(
        d.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n",
    )
    .expect("ext file");
    for (kind, keyopt) in [
        ("ec", "ec_paramgen_curve:P-256"),
        ("rsa", "rsa_keygen_bits:2048"),
    ] {
        let algo = if kind == "ec" { "ec" } else { "rsa" };
        openssl(
            d,
            &[
                "req",
                "-newkey",
                algo,
                "-pkeyopt",
                keyopt,
                "-nodes",
                "-subj",
                &format!("/CN=bench-client-{kind}"),
                "-keyout",
                &format!("{kind}.key"),
                "-out",
                &format!("{kind}.csr"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{kind}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "400",
                "-extfile",
                "leaf.ext",
                "-out",
                &format!("{kind}.crt"),
            ],
        );
        for legacy in [false, true] {
            let out = format!("{kind}-{}.p12", if legacy { "legacy" } else { "modern" });
            let (key, crt) = (format!("{kind}.key"), format!("{kind}.crt"));
            let pass = format!("pass:{PASSWORD}");
            let mut args = vec![
                "pkcs12",
                "-export",
                "-inkey",
                &key,
                "-in",
                &crt,
                "-certfile",
                "ca.pem",
                "-out",
                &out,
                "-passout",
                &pass,
            ];
            if legacy {
                args.push("-legacy");
            }
            openssl(d, &args);
        }
    }
    let read = |name: &str| std::fs::read(d.join(name)).expect("fixture written");
    P12Files {
        ec_modern: read("ec-modern.p12"),
        ec_legacy: read("ec-legacy.p12"),
        rsa_modern: read("rsa-modern.p12"),
        rsa_legacy: read("rsa-legacy.p12"),
        ca_pem: read("ca.pem"),
        dir,
    }
}

/// Decodes a P12 the way the gateway does; panics unless the verdict is `usable`.
pub(crate) fn usable(der: &[u8]) -> UsableP12 {
    p12::diagnose(
        der.to_vec(),
        SecretString::from(PASSWORD),
        &DiagnosisPolicy::default(),
    )
    .into_usable()
    .map_err(|report| format!("{:?}", report.problem_codes()))
    .expect("the bench P12 is usable")
}

/// The pingora identity, as the snapshot builder makes it.
pub(crate) fn cert_key(usable: &UsableP12) -> Arc<CertKey> {
    let identity = usable.identity();
    let chain = identity.chain.iter().map(|c| c.to_vec()).collect();
    Arc::new(CertKey::new(
        chain,
        identity.key.secret_pkcs8_der().to_vec(),
    ))
}

/// A trust bundle as a mapping's `ca_pem` gives it.
pub(crate) fn trust(ca_pem: &[u8]) -> Trust {
    let ders: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(ca_pem)
        .map(|c| c.expect("CA PEM").to_vec())
        .collect();
    let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ders.concat()));
    let wrapped: Vec<WrappedX509> = ders
        .into_iter()
        .map(|der| WrappedX509::new(der, parse_x509))
        .collect();
    Trust {
        ca: Some(Arc::from(wrapped)),
        id,
    }
}

pub(crate) fn binding(
    account: &str,
    service: &str,
    url: String,
    url_match: UrlMatch,
    cert_key: &Arc<CertKey>,
    trust: &Trust,
    index: usize,
) -> Binding {
    Binding {
        origin: Origin::Config { index },
        account: AccountId::new(account).expect("account id"),
        service: ServiceName::new(service).expect("service name"),
        url,
        url_match,
        certificate: PresentedCertificate {
            id: None,
            fingerprint: Fingerprint::of_der(b"bench"),
            subject: "CN=bench-client-ec".into(),
            not_after: time::OffsetDateTime::now_utc() + time::Duration::days(400),
        },
        cert_key: Arc::clone(cert_key),
        trust: trust.clone(),
        verify_server: true,
        group_key: index as u64,
    }
}

/// `n` mappings over 100 accounts and one service: exact URLs
/// `https://partner{a}.example:8443/api/v1/resource{i}?q=1`, or prefixes
/// `https://partner{a}.example:8443/api/v1/resource{i}` (matched by deeper request URLs).
pub(crate) fn snapshot(
    n: usize,
    url_match: UrlMatch,
    cert_key: &Arc<CertKey>,
    trust: &Trust,
) -> Snapshot {
    let mut snapshot = Snapshot::new(1, Vec::new());
    for i in 0..n {
        let a = i % 100;
        let url = match url_match {
            UrlMatch::Exact => format!("https://partner{a}.example:8443/api/v1/resource{i}?q=1"),
            UrlMatch::Prefix => format!("https://partner{a}.example:8443/api/v1/resource{i}"),
        };
        let b = binding(
            &format!("account{a}"),
            "PAYMENTS",
            url,
            url_match,
            cert_key,
            trust,
            i,
        );
        assert!(snapshot.insert(b), "mapping keys are unique");
    }
    snapshot
}

/// The request URL that hits mapping `i` of [`snapshot`].
pub(crate) fn request_url(i: usize, url_match: UrlMatch) -> (String, String) {
    let a = i % 100;
    let url = match url_match {
        UrlMatch::Exact => format!("https://partner{a}.example:8443/api/v1/resource{i}?q=1"),
        UrlMatch::Prefix => {
            format!("https://partner{a}.example:8443/api/v1/resource{i}/orders/42/items?x=1")
        }
    };
    (format!("account{a}"), url)
}
