//! PKCS#12: decoding the files partners and brands really produce, and saying plainly whether
//! one can serve as a client identity, and why not.
//!
//! [`diagnose`] never panics on any input and never puts the password or key material into its
//! report; a [`UsableP12`] exists only for files whose verdict is `usable`.

use std::fmt;

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use secrecy::SecretString;
use serde::Serialize;
use time::OffsetDateTime;

use crate::ids::Fingerprint;

pub mod algorithms;
mod diagnosis;

pub use algorithms::{Algorithms, Mac, Protection};
pub use diagnosis::{
    diagnose, diagnose_pem, Code, Diagnosis, DiagnosisPolicy, Facts, Finding, KeyFacts, Report,
    Verdict,
};

/// Default warning window before a certificate's notAfter: long enough to rotate by hand.
pub const DEFAULT_EXPIRES_SOON_DAYS: i64 = 30;

/// The decoded identity, as rustls and pingora take it: the chain leaf first, the PKCS#8 key.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.chain.len())
            .field(
                "leaf",
                &Fingerprint::of_der(self.chain.first().map_or(&[][..], |c| c)),
            )
            .field("key", &"[redacted]")
            .finish()
    }
}

/// What the store keeps beside a certificate and lists without reading secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateFacts {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub fingerprint: Fingerprint,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// A P12 file that passed the diagnosis: its bytes and password as uploaded, and what they hold.
pub struct UsableP12 {
    der: Vec<u8>,
    password: SecretString,
    facts: CertificateFacts,
    identity: ClientIdentity,
}

impl UsableP12 {
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn password(&self) -> &SecretString {
        &self.password
    }

    pub fn facts(&self) -> &CertificateFacts {
        &self.facts
    }

    pub fn identity(&self) -> &ClientIdentity {
        &self.identity
    }
}

impl fmt::Debug for UsableP12 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsableP12")
            .field("der", &format_args!("[{} bytes]", self.der.len()))
            .field("password", &"[redacted]")
            .field("facts", &self.facts)
            .finish()
    }
}
