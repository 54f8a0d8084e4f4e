//! Newtypes for the identifiers that cross module boundaries.
//!
//! Accounts, services and names arrive from callers, so each constructor refuses the values that
//! would break a store path or a log line: empty strings, control characters, path separators
//! where a path segment is built from them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest account, service or name accepted; longer values are almost certainly not ids.
pub const MAX_ID_LEN: usize = 200;

/// Why a caller-supplied identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {MAX_ID_LEN} characters")]
    TooLong { what: &'static str },
    #[error("{what} contains a control character or '/'; use letters, digits, '-', '_' or '.'")]
    BadCharacter { what: &'static str },
}

fn check(what: &'static str, value: &str, allow_slash: bool) -> Result<(), IdError> {
    if value.trim().is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { what });
    }
    if value
        .chars()
        .any(|c| c.is_control() || (!allow_slash && c == '/'))
    {
        return Err(IdError::BadCharacter { what });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, allow_slash = $slash:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($what, &value, $slash)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

string_id!(
    /// A tenant, called `siteId` or `accountId` by the compatible API.
    AccountId,
    "account id",
    allow_slash = false
);
string_id!(
    /// Who calls: `IDP`, `WEBHOOKS`, `0`, ... The set is configurable, not a closed enum.
    ServiceName,
    "service name",
    allow_slash = false
);
string_id!(
    /// A certificate's or mapping's human name, unique per account.
    EntryName,
    "name",
    allow_slash = true
);

macro_rules! integer_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

integer_id!(
    /// Assigned by the store when a certificate is created; never reused.
    CertificateId
);
integer_id!(
    /// Assigned by the store when a mapping is created; never reused.
    MappingId
);

/// SHA-256 of a certificate's DER encoding, lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self(hex::encode(Sha256::digest(der)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 16 hex digits: enough to tell certificates apart in a log line.
    pub fn short(&self) -> &str {
        &self.0[..16.min(self.0.len())]
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_account_ids_that_would_escape_a_store_path() {
        assert_eq!(
            AccountId::new("a/../b"),
            Err(IdError::BadCharacter { what: "account id" })
        );
        assert_eq!(
            AccountId::new(" "),
            Err(IdError::Empty { what: "account id" })
        );
        assert!(AccountId::new("le1606809").is_ok());
    }

    #[test]
    fn names_may_contain_slashes_but_not_control_characters() {
        assert!(EntryName::new("partner/prod").is_ok());
        assert!(EntryName::new("bad\nname").is_err());
    }
}
