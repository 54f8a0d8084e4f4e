//! Which algorithms protect a PKCS#12 file, read from its outer structure before decryption.
//!
//! The report names them so that a person can see at a glance why a file is "legacy" and which
//! tool made it; none of this needs the password.

use der::asn1::{ObjectIdentifier as Oid, OctetString};
use der::{Decode, Encode};
use pkcs12::cms::content_info::ContentInfo;
use pkcs12::cms::encrypted_data::EncryptedData;
use pkcs12::pbe_params::EncryptedPrivateKeyInfo;
use pkcs12::safe_bag::SafeContents;
use pkcs12::{AuthenticatedSafe, Pfx};
use serde::Serialize;

const DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
const ENCRYPTED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.6");

const KEY_BAG: Oid = Oid::new_unwrap("1.2.840.113549.1.12.10.1.1");
const SHROUDED_KEY_BAG: Oid = Oid::new_unwrap("1.2.840.113549.1.12.10.1.2");
const CERT_BAG: Oid = Oid::new_unwrap("1.2.840.113549.1.12.10.1.3");

const PBES2: Oid = Oid::new_unwrap("1.2.840.113549.1.5.13");
const PBE_SHA1_RC4_128: Oid = Oid::new_unwrap("1.2.840.113549.1.12.1.1");
const PBE_SHA1_RC4_40: Oid = Oid::new_unwrap("1.2.840.113549.1.12.1.2");
const PBE_SHA1_3DES: Oid = Oid::new_unwrap("1.2.840.113549.1.12.1.3");
const PBE_SHA1_2DES: Oid = Oid::new_unwrap("1.2.840.113549.1.12.1.4");
const PBE_SHA1_RC2_128: Oid = Oid::new_unwrap("1.2.840.113549.1.12.1.5");
const PBE_SHA1_RC2_40: Oid = Oid::new_unwrap("1.2.840.113549.1.12.1.6");

const AES_128_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.2");
const AES_192_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.22");
const AES_256_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.42");
const DES_EDE3_CBC: Oid = Oid::new_unwrap("1.2.840.113549.3.7");

const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
const SHA224: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.4");
const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");

/// How a group of bags is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Protection {
    None,
    Pbes2 { cipher: &'static str },
    PbeSha1Rc2_40,
    PbeSha1Rc2_128,
    PbeSha1Rc4_40,
    PbeSha1Rc4_128,
    PbeSha1TripleDes,
    PbeSha1TwoKeyDes,
    Other(String),
}

impl Protection {
    fn from_algorithm(oid: Oid, parameters: Option<&der::Any>) -> Self {
        match oid {
            PBES2 => Self::Pbes2 {
                cipher: pbes2_cipher(parameters),
            },
            PBE_SHA1_RC2_40 => Self::PbeSha1Rc2_40,
            PBE_SHA1_RC2_128 => Self::PbeSha1Rc2_128,
            PBE_SHA1_RC4_40 => Self::PbeSha1Rc4_40,
            PBE_SHA1_RC4_128 => Self::PbeSha1Rc4_128,
            PBE_SHA1_3DES => Self::PbeSha1TripleDes,
            PBE_SHA1_2DES => Self::PbeSha1TwoKeyDes,
            other => Self::Other(other.to_string()),
        }
    }

    /// RC2, RC4 and DES-based schemes: still common, decodable, but no longer protection.
    pub fn is_legacy(&self) -> bool {
        match self {
            Self::None | Self::Other(_) => false,
            Self::Pbes2 { cipher } => *cipher == "des-ede3-cbc",
            _ => true,
        }
    }
}

impl From<Protection> for String {
    fn from(protection: Protection) -> String {
        match protection {
            Protection::None => "none".into(),
            Protection::Pbes2 { cipher } => format!("pbes2-{cipher}"),
            Protection::PbeSha1Rc2_40 => "pbe-sha1-rc2-40".into(),
            Protection::PbeSha1Rc2_128 => "pbe-sha1-rc2-128".into(),
            Protection::PbeSha1Rc4_40 => "pbe-sha1-rc4-40".into(),
            Protection::PbeSha1Rc4_128 => "pbe-sha1-rc4-128".into(),
            Protection::PbeSha1TripleDes => "pbe-sha1-3des".into(),
            Protection::PbeSha1TwoKeyDes => "pbe-sha1-2des".into(),
            Protection::Other(oid) => format!("unknown ({oid})"),
        }
    }
}

fn pbes2_cipher(parameters: Option<&der::Any>) -> &'static str {
    let scheme = parameters
        .and_then(|any| any.to_der().ok())
        .and_then(|der| pkcs5::pbes2::Parameters::from_der(&der).ok())
        .map(|params| params.encryption.oid());
    match scheme {
        Some(AES_128_CBC) => "aes-128-cbc",
        Some(AES_192_CBC) => "aes-192-cbc",
        Some(AES_256_CBC) => "aes-256-cbc",
        Some(DES_EDE3_CBC) => "des-ede3-cbc",
        _ => "unknown-cipher",
    }
}

/// The file's integrity check: HMAC over the contents with a password-derived key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Mac {
    None,
    Hmac(&'static str),
    Other(String),
}

impl Mac {
    pub fn is_legacy(&self) -> bool {
        *self == Self::Hmac("sha1")
    }
}

impl From<Mac> for String {
    fn from(mac: Mac) -> String {
        match mac {
            Mac::None => "none".into(),
            Mac::Hmac(digest) => format!("hmac-{digest}"),
            Mac::Other(oid) => format!("unknown ({oid})"),
        }
    }
}

/// What protects the certificate bags, the key bags and the whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Algorithms {
    /// `None` when the file holds no certificate bag readable without the password.
    pub certificate_bags: Option<Protection>,
    pub key_bags: Option<Protection>,
    pub mac: Mac,
}

impl Algorithms {
    pub fn is_legacy(&self) -> bool {
        let bags = [&self.certificate_bags, &self.key_bags];
        bags.into_iter().flatten().any(Protection::is_legacy) || self.mac.is_legacy()
    }

    /// Reads what it can; a part it cannot parse stays unknown rather than failing the file,
    /// since decoding proper reports structural damage with better words.
    pub fn read(pfx: &Pfx) -> Self {
        let mac = match &pfx.mac_data {
            None => Mac::None,
            Some(data) => match data.mac.algorithm.oid {
                SHA1 => Mac::Hmac("sha1"),
                SHA224 => Mac::Hmac("sha224"),
                SHA256 => Mac::Hmac("sha256"),
                SHA384 => Mac::Hmac("sha384"),
                SHA512 => Mac::Hmac("sha512"),
                other => Mac::Other(other.to_string()),
            },
        };
        let mut algorithms = Self {
            certificate_bags: None,
            key_bags: None,
            mac,
        };

        for safe in outer_safes(pfx).unwrap_or_default() {
            algorithms.note_safe(&safe);
        }
        algorithms
    }

    fn note_safe(&mut self, safe: &ContentInfo) {
        let Ok(content) = safe.content.to_der() else {
            return;
        };
        match safe.content_type {
            // An encrypted safe is where every producer we know puts the certificates.
            ENCRYPTED_DATA => {
                if let Ok(data) = EncryptedData::from_der(&content) {
                    let alg = &data.enc_content_info.content_enc_alg;
                    let protection = Protection::from_algorithm(alg.oid, alg.parameters.as_ref());
                    self.certificate_bags.get_or_insert(protection);
                }
            }
            DATA => {
                let bags = OctetString::from_der(&content)
                    .ok()
                    .and_then(|octets| SafeContents::from_der(octets.as_bytes()).ok());
                for bag in bags.unwrap_or_default() {
                    self.note_plain_bag(bag.bag_id, &bag.bag_value);
                }
            }
            _ => {}
        }
    }

    fn note_plain_bag(&mut self, bag_id: Oid, value: &[u8]) {
        match bag_id {
            SHROUDED_KEY_BAG => {
                let info = der::asn1::ContextSpecific::<EncryptedPrivateKeyInfo>::from_der(value);
                if let Ok(info) = info {
                    let alg = &info.value.encryption_algorithm;
                    let protection = Protection::from_algorithm(alg.oid, alg.parameters.as_ref());
                    self.key_bags.get_or_insert(protection);
                }
            }
            KEY_BAG => {
                self.key_bags.get_or_insert(Protection::None);
            }
            CERT_BAG => {
                self.certificate_bags.get_or_insert(Protection::None);
            }
            _ => {}
        }
    }
}

fn outer_safes(pfx: &Pfx) -> Option<AuthenticatedSafe<'_>> {
    if pfx.auth_safe.content_type != DATA {
        return None;
    }
    let content = pfx.auth_safe.content.to_der().ok()?;
    let octets = OctetString::from_der(&content).ok()?;
    AuthenticatedSafe::from_der(octets.as_bytes()).ok()
}
