//! The diagnosis: decode, inspect, and judge a PKCS#12 file as a client identity.

use std::fmt;
use std::sync::Arc;

use der::Decode;
use p12_keystore::error::Error as KeystoreError;
use p12_keystore::{CertificateBag, Pkcs12Archive, PrivateKeyBag};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::algorithms::Algorithms;
use super::{CertificateFacts, ClientIdentity, UsableP12, DEFAULT_EXPIRES_SOON_DAYS};
use crate::ids::Fingerprint;

const RSA_MIN_BITS: usize = 2048;

/// A stable, machine-readable reason. Problems make a file unusable; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    // Problems.
    NotPkcs12,
    WrongPassword,
    UnsupportedEncryption,
    NoPrivateKey,
    NoCertificate,
    KeyCertificateMismatch,
    UnsupportedKey,
    WeakKey,
    Expired,
    NotYetValid,
    NotForClientAuth,
    // Warnings.
    LegacyEncryption,
    ExpiresSoon,
    SelfSigned,
    IncompleteChain,
    SeveralKeys,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotPkcs12 => "not_pkcs12",
            Self::WrongPassword => "wrong_password",
            Self::UnsupportedEncryption => "unsupported_encryption",
            Self::NoPrivateKey => "no_private_key",
            Self::NoCertificate => "no_certificate",
            Self::KeyCertificateMismatch => "key_certificate_mismatch",
            Self::UnsupportedKey => "unsupported_key",
            Self::WeakKey => "weak_key",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::NotForClientAuth => "not_for_client_auth",
            Self::LegacyEncryption => "legacy_encryption",
            Self::ExpiresSoon => "expires_soon",
            Self::SelfSigned => "self_signed",
            Self::IncompleteChain => "incomplete_chain",
            Self::SeveralKeys => "several_keys",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason, with a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: Code,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Usable,
    Unusable,
}

/// The leaf's public key, as the partner will see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyFacts {
    /// `rsa`, `ec`, `ed25519`, `dsa` or `unknown`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub bits: usize,
    /// The named curve of an EC key: `P-256`, `P-384`, `P-521` or its OID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curve: Option<String>,
}

/// What the file holds, once it could be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Facts {
    #[serde(flatten)]
    pub certificate: CertificateFacts,
    pub key: KeyFacts,
    pub extended_key_usages: Vec<String>,
    /// Certificates from the leaf towards the root that the file holds, the leaf included.
    pub chain_length: usize,
}

/// The whole answer: verdict, reasons and facts. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub problems: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// Readable without the password; absent when the file is not PKCS#12 at all.
    pub encryption: Option<Algorithms>,
    /// Absent when the file could not be decrypted or holds no certificate.
    pub facts: Option<Facts>,
}

impl Report {
    pub fn problem_codes(&self) -> Vec<Code> {
        self.problems.iter().map(|f| f.code).collect()
    }

    pub fn warning_codes(&self) -> Vec<Code> {
        self.warnings.iter().map(|f| f.code).collect()
    }
}

/// What the diagnosis judges against; `now` is a parameter so that tests can move it.
#[derive(Debug, Clone)]
pub struct DiagnosisPolicy {
    pub expires_soon: Duration,
    pub now: OffsetDateTime,
}

impl Default for DiagnosisPolicy {
    fn default() -> Self {
        Self {
            expires_soon: Duration::days(DEFAULT_EXPIRES_SOON_DAYS),
            now: OffsetDateTime::now_utc(),
        }
    }
}

/// The report, and the identity when the verdict is `usable`.
#[derive(Debug)]
pub struct Diagnosis {
    pub report: Report,
    usable: Option<UsableP12>,
}

impl Diagnosis {
    #[allow(
        clippy::result_large_err,
        reason = "made once per upload; never on a hot path"
    )]
    pub fn into_usable(self) -> Result<UsableP12, Report> {
        match self.usable {
            Some(mut usable) if self.report.verdict == Verdict::Usable => {
                usable.facts = self.report.facts.map_or(usable.facts, |f| f.certificate);
                Ok(usable)
            }
            _ => Err(self.report),
        }
    }
}

/// Decodes `der` with `password` and judges it as a client identity. Never panics.
pub fn diagnose(der: Vec<u8>, password: SecretString, policy: &DiagnosisPolicy) -> Diagnosis {
    let mut findings = Findings::default();

    let decoded = decode(&der, &password);

    // The algorithms are readable without the password, so even a refused file gets this.
    let encryption = match &decoded {
        Ok((encryption, _)) => Some(encryption),
        Err((encryption, _)) => encryption.as_ref(),
    };
    if encryption.is_some_and(Algorithms::is_legacy) {
        findings.warn(
            Code::LegacyEncryption,
            "the file uses legacy protection (RC2, RC4, 3DES or a SHA-1 MAC); it works, but \
             re-export it with AES-256 and a SHA-256 MAC (OpenSSL 3 or keytool defaults)",
        );
    }
    let (encryption, archive) = match decoded {
        Ok(decoded) => decoded,
        Err((encryption, finding)) => {
            findings.problems.push(finding);
            return findings.into_diagnosis(encryption, None, None);
        }
    };

    let Some(key) = archive.keys.first() else {
        findings.problem(
            Code::NoPrivateKey,
            "the file holds no private key (a truststore or certificate-only export); \
             export the client certificate together with its private key",
        );
        if archive.certs.is_empty() {
            findings.problem(Code::NoCertificate, NO_CERTIFICATE);
        }
        return findings.into_diagnosis(Some(encryption), None, None);
    };
    if archive.keys.len() > 1 {
        findings.warn(
            Code::SeveralKeys,
            "the file holds several private keys; the first one is used",
        );
    }
    let Some(chain) = order_chain(key, &archive.certs) else {
        findings.problem(Code::NoCertificate, NO_CERTIFICATE);
        return findings.into_diagnosis(Some(encryption), None, None);
    };

    let key_der = key.key.as_der().to_vec();
    let Some((facts, identity)) = judge_identity(chain, key_der, policy, &mut findings) else {
        return findings.into_diagnosis(Some(encryption), None, None);
    };

    let usable = UsableP12 {
        der,
        password,
        facts: facts.certificate.clone(),
        identity,
    };
    findings.into_diagnosis(Some(encryption), Some(facts), Some(usable))
}

#[allow(
    clippy::result_large_err,
    reason = "made once per load; never on a hot path"
)]
/// Judges a PEM certificate chain (leaf first) and PKCS#8 PEM key, as mounted from a
/// Kubernetes secret, by the same rules as a P12 file.
pub fn diagnose_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
    policy: &DiagnosisPolicy,
) -> Result<(ClientIdentity, Facts), Report> {
    use rustls_pki_types::pem::PemObject;

    let mut findings = Findings::default();
    let chain: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(chain_pem)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect();
    let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem).ok();
    if chain.is_empty() {
        findings.problem(
            Code::NoCertificate,
            "the certificate file holds no PEM certificate",
        );
    }
    if key.is_none() {
        findings.problem(
            Code::NoPrivateKey,
            "the key file holds no PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----); convert it with \
             `openssl pkcs8 -topk8 -nocrypt`",
        );
    }
    let judged = match key {
        Some(key) if !chain.is_empty() => judge_identity(
            chain,
            key.secret_pkcs8_der().to_vec(),
            policy,
            &mut findings,
        ),
        _ => None,
    };
    match judged {
        Some((facts, identity)) if findings.problems.is_empty() => Ok((identity, facts)),
        _ => Err(findings.into_diagnosis(None, None, None).report),
    }
}

/// The checks shared by every way an identity arrives: certificate facts, key, validity,
/// usages, chain, and the final load into rustls.
fn judge_identity(
    chain: Vec<Vec<u8>>,
    key_der: Vec<u8>,
    policy: &DiagnosisPolicy,
    findings: &mut Findings,
) -> Option<(Facts, ClientIdentity)> {
    let facts = match inspect_chain(&chain, policy, findings) {
        Ok(facts) => facts,
        Err(message) => {
            findings.problem(Code::NotPkcs12, &message);
            return None;
        }
    };
    let identity = ClientIdentity {
        chain: chain.into_iter().map(CertificateDer::from).collect(),
        key: PrivatePkcs8KeyDer::from(key_der),
    };

    // A key that is already refused for its type or size would only fail again here.
    let key_refused = findings.has(Code::UnsupportedKey) || findings.has(Code::WeakKey);
    if !key_refused {
        if let Err(finding) = load_into_rustls(&identity) {
            findings.problems.push(finding);
        }
    }
    Some((facts, identity))
}

const NO_CERTIFICATE: &str = "the file holds a private key but no certificate for it; \
                              export the certificate together with the key";

#[derive(Default)]
struct Findings {
    problems: Vec<Finding>,
    warnings: Vec<Finding>,
}

impl Findings {
    fn problem(&mut self, code: Code, message: &str) {
        self.problems.push(Finding {
            code,
            message: message.to_owned(),
        });
    }

    fn warn(&mut self, code: Code, message: &str) {
        self.warnings.push(Finding {
            code,
            message: message.to_owned(),
        });
    }

    fn has(&self, code: Code) -> bool {
        self.problems.iter().any(|f| f.code == code)
    }

    fn into_diagnosis(
        self,
        encryption: Option<Algorithms>,
        facts: Option<Facts>,
        usable: Option<UsableP12>,
    ) -> Diagnosis {
        let verdict = if self.problems.is_empty() && usable.is_some() {
            Verdict::Usable
        } else {
            Verdict::Unusable
        };
        let report = Report {
            verdict,
            problems: self.problems,
            warnings: self.warnings,
            encryption,
            facts,
        };
        Diagnosis {
            report,
            usable: usable.filter(|_| verdict == Verdict::Usable),
        }
    }
}

type DecodeFailure = (Option<Algorithms>, Finding);

fn decode(
    der: &[u8],
    password: &SecretString,
) -> Result<(Algorithms, Pkcs12Archive), DecodeFailure> {
    let not_pkcs12 = |message: &str| Finding {
        code: Code::NotPkcs12,
        message: message.to_owned(),
    };
    if der.is_empty() {
        return Err((
            None,
            not_pkcs12("the file is empty; upload the .p12 or .pfx file itself"),
        ));
    }
    if der.starts_with(b"-----BEGIN") {
        return Err((
            None,
            not_pkcs12(
                "this is a PEM file, not PKCS#12; convert it with \
                 `openssl pkcs12 -export -in cert.pem -inkey key.pem -out client.p12`",
            ),
        ));
    }
    let pfx = pkcs12::Pfx::from_der(der).map_err(|_| {
        (
            None,
            not_pkcs12(
                "the file is not PKCS#12, or it is truncated; upload the complete .p12 or .pfx \
                 file exactly as exported",
            ),
        )
    })?;
    let algorithms = Algorithms::read(&pfx);

    match Pkcs12Archive::from_pkcs12(der, password.expose_secret()) {
        Ok(archive) => Ok((algorithms, archive)),
        Err(error) => {
            let finding = classify_decode_error(&error, &algorithms);
            Err((Some(algorithms), finding))
        }
    }
}

fn classify_decode_error(error: &KeystoreError, algorithms: &Algorithms) -> Finding {
    let wrong_password = Finding {
        code: Code::WrongPassword,
        message: "the password does not open this file; check it for typos, trailing spaces \
                  or newlines"
            .to_owned(),
    };
    match error {
        KeystoreError::MacError(_) => wrong_password,
        // Without a MAC, a wrong password shows up as a decryption that yields garbage.
        KeystoreError::UnpadError | KeystoreError::Pkcs5Error(_) | KeystoreError::DerError(_)
            if algorithms.mac == super::algorithms::Mac::None =>
        {
            wrong_password
        }
        KeystoreError::UnsupportedEncryptionScheme
        | KeystoreError::UnsupportedMacAlgorithm
        | KeystoreError::InvalidParameters => Finding {
            code: Code::UnsupportedEncryption,
            message: format!(
                "the file is protected with an algorithm or parameters this gateway cannot \
                 decode ({error}); re-export it with AES-256 and a SHA-256 MAC"
            ),
        },
        _ => Finding {
            code: Code::NotPkcs12,
            message: format!(
                "the password is right but the contents are damaged ({error}); export the file \
                 again"
            ),
        },
    }
}

/// The key's certificate first, then its issuers as far as the file holds them.
fn order_chain(key: &PrivateKeyBag, certs: &[CertificateBag]) -> Option<Vec<Vec<u8>>> {
    let by_key_id = key.local_key_id.as_ref().and_then(|id| {
        certs
            .iter()
            .find(|c| c.local_key_id.as_deref() == Some(id.as_ref()))
    });
    let leaf = by_key_id
        .or_else(|| certs.iter().find(|c| !is_ca(c.cert.as_der())))
        .or_else(|| certs.first())?;

    let mut chain = vec![leaf.cert.as_der().to_vec()];
    let mut current = leaf;
    while chain.len() < certs.len() && current.cert.subject() != current.cert.issuer() {
        let issuer = certs.iter().find(|c| {
            c.cert.subject() == current.cert.issuer()
                && !chain.iter().any(|der| der.as_slice() == c.cert.as_der())
        });
        let Some(issuer) = issuer else { break };
        chain.push(issuer.cert.as_der().to_vec());
        current = issuer;
    }
    Some(chain)
}

fn is_ca(der: &[u8]) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, cert)| cert.is_ca())
}

fn inspect_chain(
    chain: &[Vec<u8>],
    policy: &DiagnosisPolicy,
    findings: &mut Findings,
) -> Result<Facts, String> {
    let (_, leaf) = X509Certificate::from_der(&chain[0])
        .map_err(|e| format!("the client certificate cannot be parsed ({e})"))?;
    // The data plane parses every chain certificate again and would panic on a bad one.
    for der in &chain[1..] {
        X509Certificate::from_der(der)
            .map_err(|e| format!("a chain certificate cannot be parsed ({e})"))?;
    }

    let key = key_facts(&leaf);
    judge_key(&key, findings);
    let certificate = CertificateFacts {
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        serial: leaf.raw_serial_as_string(),
        fingerprint: Fingerprint::of_der(&chain[0]),
        not_before: leaf.validity().not_before.to_datetime(),
        not_after: leaf.validity().not_after.to_datetime(),
    };
    judge_validity(&certificate, policy, findings);
    let extended_key_usages = judge_usages(&leaf, findings);
    judge_chain(&leaf, chain, findings);

    Ok(Facts {
        certificate,
        key,
        extended_key_usages,
        chain_length: chain.len(),
    })
}

fn key_facts(leaf: &X509Certificate<'_>) -> KeyFacts {
    let spki = leaf.public_key();
    let bits = spki.parsed().map_or(0, |key| key.key_size());
    match spki.parsed() {
        Ok(PublicKey::RSA(_)) => KeyFacts {
            kind: "rsa",
            bits,
            curve: None,
        },
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| curve_name(&oid.to_id_string()));
            KeyFacts {
                kind: "ec",
                bits,
                curve,
            }
        }
        Ok(PublicKey::DSA(_)) => KeyFacts {
            kind: "dsa",
            bits,
            curve: None,
        },
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => KeyFacts {
            kind: "ed25519",
            bits: 256,
            curve: None,
        },
        _ => KeyFacts {
            kind: "unknown",
            bits,
            curve: None,
        },
    }
}

fn curve_name(oid: &str) -> String {
    match oid {
        "1.2.840.10045.3.1.7" => "P-256".into(),
        "1.3.132.0.34" => "P-384".into(),
        "1.3.132.0.35" => "P-521".into(),
        other => other.into(),
    }
}

fn judge_key(key: &KeyFacts, findings: &mut Findings) {
    let supported_curve = matches!(key.curve.as_deref(), Some("P-256" | "P-384"));
    match key.kind {
        "rsa" if key.bits < RSA_MIN_BITS => findings.problems.push(Finding {
            code: Code::WeakKey,
            message: format!(
                "the RSA key has {} bits; partners and TLS libraries refuse keys under \
                 {RSA_MIN_BITS} bits, so issue a new certificate with a stronger key",
                key.bits
            ),
        }),
        "rsa" | "ed25519" => {}
        "ec" if supported_curve => {}
        "ec" => findings.problems.push(Finding {
            code: Code::UnsupportedKey,
            message: format!(
                "the EC key is on curve {}, which TLS clients do not support; use P-256 or P-384",
                key.curve.as_deref().unwrap_or("(unnamed)")
            ),
        }),
        other => findings.problems.push(Finding {
            code: Code::UnsupportedKey,
            message: format!(
                "the key type {other} cannot sign a TLS handshake; use an RSA (2048 bits or \
                 more) or EC P-256 / P-384 key"
            ),
        }),
    }
}

fn judge_validity(facts: &CertificateFacts, policy: &DiagnosisPolicy, findings: &mut Findings) {
    let date = |t: OffsetDateTime| t.date().to_string();
    if policy.now > facts.not_after {
        findings.problems.push(Finding {
            code: Code::Expired,
            message: format!(
                "the certificate expired on {}; ask the issuer for a new one",
                date(facts.not_after)
            ),
        });
    } else if policy.now < facts.not_before {
        findings.problems.push(Finding {
            code: Code::NotYetValid,
            message: format!(
                "the certificate is valid only from {}; upload it then, or check the clock of \
                 whoever issued it",
                date(facts.not_before)
            ),
        });
    } else if facts.not_after - policy.now < policy.expires_soon {
        findings.warnings.push(Finding {
            code: Code::ExpiresSoon,
            message: format!(
                "the certificate expires on {}; plan its replacement",
                date(facts.not_after)
            ),
        });
    }
}

fn judge_usages(leaf: &X509Certificate<'_>, findings: &mut Findings) -> Vec<String> {
    let Ok(Some(eku)) = leaf.extended_key_usage() else {
        return Vec::new();
    };
    let eku = eku.value;
    let named = [
        (eku.any, "any"),
        (eku.server_auth, "serverAuth"),
        (eku.client_auth, "clientAuth"),
        (eku.code_signing, "codeSigning"),
        (eku.email_protection, "emailProtection"),
        (eku.time_stamping, "timeStamping"),
        (eku.ocsp_signing, "ocspSigning"),
    ];
    let mut usages: Vec<String> = named
        .iter()
        .filter(|(present, _)| *present)
        .map(|(_, name)| (*name).to_owned())
        .collect();
    usages.extend(eku.other.iter().map(|oid| oid.to_id_string()));

    if !eku.client_auth && !eku.any {
        findings.problems.push(Finding {
            code: Code::NotForClientAuth,
            message: format!(
                "the certificate's extended key usage ({}) does not include clientAuth, so \
                 partners will refuse it as a client certificate; ask for one issued for \
                 client authentication",
                usages.join(", ")
            ),
        });
    }
    usages
}

fn judge_chain(leaf: &X509Certificate<'_>, chain: &[Vec<u8>], findings: &mut Findings) {
    if leaf.subject().as_raw() == leaf.issuer().as_raw() {
        findings.warn(
            Code::SelfSigned,
            "the certificate is self-signed; the partner must trust this exact certificate",
        );
        return;
    }
    let last = chain
        .last()
        .and_then(|der| X509Certificate::from_der(der).ok());
    let ends_at_root = last.is_some_and(|(_, c)| c.subject().as_raw() == c.issuer().as_raw());
    if !ends_at_root {
        findings.warn(
            Code::IncompleteChain,
            "the file does not hold the chain up to a root; the partner must already know the \
             missing intermediates, or re-export with the full chain",
        );
    }
}

fn load_into_rustls(identity: &ClientIdentity) -> Result<(), Finding> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(identity.key.clone_key());
    let built = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|builder| {
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(identity.chain.clone(), key)
        });
    match built {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(rustls::Error::InconsistentKeys(_))) => Err(Finding {
            code: Code::KeyCertificateMismatch,
            message: "the private key does not belong to the certificate; export the key \
                      together with its own certificate"
                .to_owned(),
        }),
        Ok(Err(error)) | Err(error) => Err(Finding {
            code: Code::UnsupportedKey,
            message: format!(
                "the TLS library cannot use this key ({error}); use an RSA (2048 bits or more) \
                 or EC P-256 / P-384 key"
            ),
        }),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Usable => "usable",
            Verdict::Unusable => "unusable",
        };
        writeln!(f, "verdict: {verdict}")?;
        if let Some(facts) = &self.facts {
            let c = &facts.certificate;
            writeln!(f, "subject: {}", c.subject)?;
            writeln!(f, "issuer: {}", c.issuer)?;
            writeln!(f, "serial: {}", c.serial)?;
            writeln!(f, "sha-256 fingerprint: {}", c.fingerprint)?;
            writeln!(
                f,
                "valid: {} to {}",
                rfc3339(c.not_before),
                rfc3339(c.not_after)
            )?;
            let curve = facts
                .key
                .curve
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            writeln!(f, "key: {} {} bits{curve}", facts.key.kind, facts.key.bits)?;
            writeln!(
                f,
                "extended key usages: {}",
                facts.extended_key_usages.join(", ")
            )?;
            writeln!(f, "chain length: {}", facts.chain_length)?;
        }
        if let Some(enc) = &self.encryption {
            let bags = |p: &Option<super::algorithms::Protection>| {
                p.clone().map_or_else(|| "unknown".to_owned(), String::from)
            };
            writeln!(f, "certificate bags: {}", bags(&enc.certificate_bags))?;
            writeln!(f, "key bags: {}", bags(&enc.key_bags))?;
            writeln!(f, "mac: {}", String::from(enc.mac.clone()))?;
        }
        for finding in &self.problems {
            writeln!(f, "problem {}: {}", finding.code, finding.message)?;
        }
        for finding in &self.warnings {
            writeln!(f, "warning {}: {}", finding.code, finding.message)?;
        }
        Ok(())
    }
}
