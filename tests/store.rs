//! The store contract, run against both backends: a local directory and a real OpenBao dev
//! server. Each behaviour below is one `async fn` taking a [`Fixture`]; `both_backends!` makes a
//! `local::` and a `vault::` test of each. Backend-specific behaviour follows at the end.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use mtls_gateway::ids::{AccountId, CertificateId, EntryName, MappingId, ServiceName};
use mtls_gateway::store::{
    self, CertificateChange, CertificateRecord, LocalConfig, Mapping, MappingSpec, NewCertificate,
    Store, StoreConfig, StoreError, UrlMatch, VaultAuth, VaultConfig,
};
use secrecy::ExposeSecret;
use support::certs::{self, random_hex};
use support::openbao::{self, OpenBao};

/// Rounds of the two-writers races: enough to catch a race that wins most of the time.
const RACE_ROUNDS: usize = 10;

/// Where a test's store lives. [`Backend::open`] gives another instance on the same data: a
/// second replica, or the same gateway after a restart.
enum Backend {
    Local {
        dir: tempfile::TempDir,
    },
    Vault {
        config: VaultConfig,
        /// Holds the token file.
        _dir: tempfile::TempDir,
    },
}

impl Backend {
    fn local() -> Self {
        Self::Local {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// A fresh prefix on the shared server, and a token that has only the documented policy,
    /// so every behaviour also proves that policy is enough.
    async fn vault() -> Self {
        let bao = OpenBao::shared();
        let prefix = format!("test-{}", random_hex(6));
        let token = bao
            .token_with_policy(&prefix, &openbao::store_policy("secret", &prefix))
            .await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &token).expect("write token file");

        let mut config = VaultConfig::new(&bao.address);
        config.prefix = prefix;
        config.auth = VaultAuth::Token {
            token_file: Some(token_file),
            token_env: None,
        };
        Self::Vault { config, _dir: dir }
    }

    fn config(&self) -> StoreConfig {
        match self {
            Self::Local { dir } => StoreConfig::Local(LocalConfig {
                path: dir.path().join("store"),
            }),
            Self::Vault { config, .. } => StoreConfig::Vault(config.clone()),
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        store::open(&self.config()).await.expect("open the store")
    }
}

/// A store, and two real P12 files (with their passwords) to put in it.
struct Fixture {
    backend: Backend,
    store: Arc<dyn Store>,
    p12s: [(Vec<u8>, String); 2],
    _files: tempfile::TempDir,
}

impl Fixture {
    async fn new(backend: Backend) -> Self {
        let files = tempfile::tempdir().expect("temporary directory");
        let p12s = [
            certs::make_p12(files.path(), "partner-one.example"),
            certs::make_p12(files.path(), "partner-two.example"),
        ];
        let store = backend.open().await;
        Self {
            backend,
            store,
            p12s,
            _files: files,
        }
    }

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// A certificate named `name` holding the first P12.
    fn certificate(&self, account: &AccountId, name: &str) -> NewCertificate {
        self.certificate_with(account, name, 0)
    }

    fn certificate_with(&self, account: &AccountId, name: &str, p12: usize) -> NewCertificate {
        let (der, password) = &self.p12s[p12];
        NewCertificate {
            account: account.clone(),
            name: entry_name(name),
            p12: certs::usable(der, password),
        }
    }

    /// Panics if `text` holds a password or a P12 (base64, as stored) of this fixture.
    fn assert_no_secret(&self, text: &str) {
        for (der, password) in &self.p12s {
            let stored = base64::engine::general_purpose::STANDARD.encode(der);
            assert!(
                !text.contains(password.as_str()),
                "a password leaked: {text}"
            );
            assert!(!text.contains(&stored[..40]), "a p12 leaked: {text}");
        }
    }
}

fn account(name: &str) -> AccountId {
    AccountId::new(format!("{name}-{}", random_hex(3))).expect("valid account id")
}

fn entry_name(name: &str) -> EntryName {
    EntryName::new(name).expect("valid name")
}

fn spec(name: &str, service: &str, url: &str, certificate: CertificateId) -> MappingSpec {
    MappingSpec {
        name: entry_name(name),
        service: ServiceName::new(service).expect("valid service name"),
        url: url.into(),
        certificate_id: certificate,
        enabled: true,
        url_match: UrlMatch::Exact,
        ca_pem: None,
        verify_server: true,
    }
}

/// Everything a reader can see in the store.
#[derive(Debug, PartialEq)]
struct Contents {
    revision: u64,
    accounts: Vec<AccountId>,
    certificates: Vec<CertificateRecord>,
    mappings: Vec<Mapping>,
}

async fn contents(store: &dyn Store) -> Contents {
    let accounts = store.accounts().await.expect("list accounts");
    let mut certificates = Vec::new();
    let mut mappings = Vec::new();
    for account in &accounts {
        certificates.extend(
            store
                .certificates(account)
                .await
                .expect("list certificates"),
        );
        mappings.extend(store.mappings(account).await.expect("list mappings"));
    }
    Contents {
        revision: store.revision().await.expect("read revision"),
        accounts,
        certificates,
        mappings,
    }
}

fn assert_conflict(result: Result<impl std::fmt::Debug, StoreError>, what: &str, value: &str) {
    match result {
        Err(StoreError::Conflict {
            what: found,
            value: found_value,
            ..
        }) => {
            assert_eq!((found, found_value.as_str()), (what, value));
        }
        other => panic!("expected a conflict on {what} {value:?}, got {other:?}"),
    }
}

fn assert_not_found(result: Result<impl std::fmt::Debug, StoreError>, what: &str, id: u64) {
    match result {
        Err(StoreError::NotFound {
            what: found,
            id: found_id,
            ..
        }) => assert_eq!((found, found_id), (what, id)),
        other => panic!("expected {what} {id} not found, got {other:?}"),
    }
}

macro_rules! both_backends {
    ($($behaviour:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let fixture = super::Fixture::new(super::Backend::local()).await;
                    super::$behaviour(&fixture).await;
                }
            )*
        }

        mod vault {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let fixture = super::Fixture::new(super::Backend::vault().await).await;
                    super::$behaviour(&fixture).await;
                }
            )*
        }
    };
}

both_backends!(
    creates_reads_and_lists_certificates_without_secrets,
    certificate_names_are_unique_per_account,
    renaming_a_certificate_frees_its_old_name,
    replacing_the_p12_changes_fingerprint_and_secret,
    refuses_to_delete_a_certificate_in_use_unless_forced,
    creates_reads_updates_and_deletes_mappings,
    mapping_names_and_keys_are_unique_per_account,
    mappings_point_only_at_certificates_of_their_account,
    revision_moves_on_every_write_and_only_then,
    refused_writes_leave_the_store_as_it_was,
    lists_the_accounts_that_hold_entries,
    names_with_slashes_dots_and_percent_signs_stay_distinct,
    missing_entries_are_reported_as_not_found,
    ids_are_never_reused,
    certificates_survive_reopening_the_store,
    two_replicas_creating_one_name_at_once_let_exactly_one_win,
    two_replicas_creating_one_mapping_key_at_once_let_exactly_one_win,
);

async fn creates_reads_and_lists_certificates_without_secrets(f: &Fixture) {
    let account = account("acme");
    let new = f.certificate(&account, "partner prod");
    let fingerprint = new.p12.facts().fingerprint.clone();

    let created = f.store().create_certificate(new).await.expect("create");

    assert_eq!(created.name.as_str(), "partner prod");
    assert_eq!(created.account, account);
    assert_eq!(created.fingerprint, fingerprint);
    assert_eq!(created.subject, "CN=partner-one.example");
    let read = f
        .store()
        .certificate(&account, created.id)
        .await
        .expect("read");
    assert_eq!(read, created);
    let listed = f.store().certificates(&account).await.expect("list");
    assert_eq!(listed, std::slice::from_ref(&created));
    f.assert_no_secret(&format!("{listed:?} {read:?}"));
    f.assert_no_secret(&serde_json::to_string(&listed).expect("serialise"));

    let secret = f
        .store()
        .certificate_secret(&account, created.id)
        .await
        .expect("read secret");
    assert_eq!(secret.der, f.p12s[0].0);
    assert_eq!(secret.password.expose_secret(), f.p12s[0].1);
    f.assert_no_secret(&format!("{secret:?}"));
}

async fn certificate_names_are_unique_per_account(f: &Fixture) {
    let (first, second) = (account("first"), account("second"));
    f.store()
        .create_certificate(f.certificate(&first, "partner"))
        .await
        .expect("create");

    let again = f
        .store()
        .create_certificate(f.certificate_with(&first, "partner", 1))
        .await;
    let elsewhere = f
        .store()
        .create_certificate(f.certificate(&second, "partner"))
        .await;

    let error = again.as_ref().map(drop).expect_err("same name refused");
    f.assert_no_secret(&format!("{error} {error:?}"));
    assert!(error.to_string().contains("\"partner\""), "{error}");
    assert_conflict(again, "certificate name", "partner");
    elsewhere.expect("the same name in another account is fine");
    assert_eq!(f.store().certificates(&first).await.expect("list").len(), 1);
}

async fn renaming_a_certificate_frees_its_old_name(f: &Fixture) {
    let account = account("acme");
    let created = f
        .store()
        .create_certificate(f.certificate(&account, "old"))
        .await
        .expect("create");

    let change = CertificateChange {
        name: Some(entry_name("new")),
        p12: None,
    };
    let renamed = f
        .store()
        .update_certificate(&account, created.id, change)
        .await
        .expect("rename");

    assert_eq!(renamed.name.as_str(), "new");
    assert_eq!(renamed.fingerprint, created.fingerprint);
    assert_eq!(
        f.store()
            .certificate(&account, created.id)
            .await
            .expect("read"),
        renamed
    );
    let reused = f
        .store()
        .create_certificate(f.certificate(&account, "old"))
        .await
        .expect("the old name is free again");
    let taken = CertificateChange {
        name: Some(entry_name("new")),
        p12: None,
    };
    let clash = f
        .store()
        .update_certificate(&account, reused.id, taken)
        .await;
    assert_conflict(clash, "certificate name", "new");
}

async fn replacing_the_p12_changes_fingerprint_and_secret(f: &Fixture) {
    let account = account("acme");
    let created = f
        .store()
        .create_certificate(f.certificate(&account, "partner"))
        .await
        .expect("create");
    let replacement = f.certificate_with(&account, "unused", 1).p12;
    let new_fingerprint = replacement.facts().fingerprint.clone();

    let change = CertificateChange {
        name: None,
        p12: Some(replacement),
    };
    let updated = f
        .store()
        .update_certificate(&account, created.id, change)
        .await
        .expect("replace the p12");

    assert_eq!(updated.name, created.name);
    assert_eq!(updated.fingerprint, new_fingerprint);
    assert_ne!(updated.fingerprint, created.fingerprint);
    assert_eq!(updated.subject, "CN=partner-two.example");
    assert!(updated.updated_at >= created.updated_at);
    let listed = f.store().certificates(&account).await.expect("list");
    assert_eq!(listed, std::slice::from_ref(&updated));
    let secret = f
        .store()
        .certificate_secret(&account, created.id)
        .await
        .expect("read secret");
    assert_eq!(secret.der, f.p12s[1].0);
    assert_eq!(secret.password.expose_secret(), f.p12s[1].1);
}

async fn refuses_to_delete_a_certificate_in_use_unless_forced(f: &Fixture) {
    let account = account("acme");
    let certificate = f
        .store()
        .create_certificate(f.certificate(&account, "partner"))
        .await
        .expect("create");
    let mapping = f
        .store()
        .create_mapping(
            &account,
            spec("idp", "IDP", "https://partner.example/a", certificate.id),
        )
        .await
        .expect("map");

    let refused = f
        .store()
        .delete_certificate(&account, certificate.id, false)
        .await;

    match &refused {
        Err(StoreError::InUse { id, mappings, .. }) => {
            assert_eq!(
                (*id, mappings.as_slice()),
                (certificate.id, &[mapping.id][..])
            );
        }
        other => panic!("expected in use, got {other:?}"),
    }
    let message = refused.expect_err("refused").to_string();
    assert!(message.contains(&mapping.id.to_string()), "{message}");
    assert_eq!(
        f.store()
            .certificate(&account, certificate.id)
            .await
            .expect("still there"),
        certificate
    );

    f.store()
        .delete_certificate(&account, certificate.id, true)
        .await
        .expect("forced delete");

    assert_not_found(
        f.store().certificate(&account, certificate.id).await,
        "certificate",
        certificate.id.0,
    );
    assert!(f
        .store()
        .certificates(&account)
        .await
        .expect("list")
        .is_empty());
    f.store()
        .create_certificate(f.certificate(&account, "partner"))
        .await
        .expect("the name is free again");
}

async fn creates_reads_updates_and_deletes_mappings(f: &Fixture) {
    let account = account("acme");
    let one = f
        .store()
        .create_certificate(f.certificate(&account, "one"))
        .await
        .expect("create");
    let two = f
        .store()
        .create_certificate(f.certificate_with(&account, "two", 1))
        .await
        .expect("create");
    let mut wanted = spec("idp", "IDP", "https://partner.example/a?x=1", one.id);
    wanted.ca_pem = Some("-----BEGIN CERTIFICATE-----\n...".into());
    wanted.verify_server = false;

    let created = f
        .store()
        .create_mapping(&account, wanted.clone())
        .await
        .expect("create mapping");

    assert_eq!(
        (created.account.clone(), created.spec.clone()),
        (account.clone(), wanted)
    );
    assert_eq!(
        f.store().mapping(&account, created.id).await.expect("read"),
        created
    );
    assert_eq!(
        f.store().mappings(&account).await.expect("list"),
        std::slice::from_ref(&created)
    );

    let mut changed = spec("idp-v2", "IDP", "https://partner.example/b", two.id);
    changed.url_match = UrlMatch::Prefix;
    changed.enabled = false;
    let updated = f
        .store()
        .update_mapping(&account, created.id, changed.clone())
        .await
        .expect("update mapping");

    assert_eq!((updated.id, updated.spec.clone()), (created.id, changed));
    assert_eq!(
        f.store().mappings(&account).await.expect("list"),
        std::slice::from_ref(&updated)
    );
    let old_name_and_key = f
        .store()
        .create_mapping(&account, created.spec.clone())
        .await
        .expect("the old name and key are free again");

    f.store()
        .delete_mapping(&account, updated.id)
        .await
        .expect("delete mapping");

    assert_not_found(
        f.store().mapping(&account, updated.id).await,
        "mapping",
        updated.id.0,
    );
    assert_eq!(
        f.store().mappings(&account).await.expect("list"),
        [old_name_and_key]
    );
    f.store()
        .create_mapping(&account, updated.spec.clone())
        .await
        .expect("a deleted mapping's name and key are free");
}

async fn mapping_names_and_keys_are_unique_per_account(f: &Fixture) {
    let (first, second) = (account("first"), account("second"));
    let certificate = f
        .store()
        .create_certificate(f.certificate(&first, "partner"))
        .await
        .expect("create");
    let other = f
        .store()
        .create_certificate(f.certificate(&second, "partner"))
        .await
        .expect("create");
    let url = "https://partner.example/api";
    f.store()
        .create_mapping(&first, spec("idp", "IDP", url, certificate.id))
        .await
        .expect("map");

    let same_name = spec(
        "idp",
        "IDP",
        "https://partner.example/other",
        certificate.id,
    );
    assert_conflict(
        f.store().create_mapping(&first, same_name).await,
        "mapping name",
        "idp",
    );
    assert_conflict(
        f.store()
            .create_mapping(&first, spec("idp-2", "IDP", url, certificate.id))
            .await,
        "mapping for service and url",
        &format!("IDP {url}"),
    );
    f.store()
        .create_mapping(&first, spec("webhooks", "WEBHOOKS", url, certificate.id))
        .await
        .expect("another service may map the same url");
    f.store()
        .create_mapping(&second, spec("idp", "IDP", url, other.id))
        .await
        .expect("another account may use the same name and key");
    assert_eq!(f.store().mappings(&first).await.expect("list").len(), 2);
}

async fn mappings_point_only_at_certificates_of_their_account(f: &Fixture) {
    let (owner, stranger) = (account("owner"), account("stranger"));
    let certificate = f
        .store()
        .create_certificate(f.certificate(&owner, "partner"))
        .await
        .expect("create");
    let own = f
        .store()
        .create_certificate(f.certificate(&stranger, "partner"))
        .await
        .expect("create");
    let foreign = spec("idp", "IDP", "https://partner.example/", certificate.id);

    let refused = f.store().create_mapping(&stranger, foreign.clone()).await;

    assert_not_found(refused, "certificate", certificate.id.0);
    let missing = spec(
        "idp",
        "IDP",
        "https://partner.example/",
        CertificateId(999_999),
    );
    assert_not_found(
        f.store().create_mapping(&owner, missing).await,
        "certificate",
        999_999,
    );
    let mapping = f
        .store()
        .create_mapping(
            &stranger,
            spec("idp", "IDP", "https://partner.example/", own.id),
        )
        .await
        .expect("map");
    assert_not_found(
        f.store()
            .update_mapping(&stranger, mapping.id, foreign)
            .await,
        "certificate",
        certificate.id.0,
    );
    assert_eq!(
        f.store()
            .mapping(&stranger, mapping.id)
            .await
            .expect("read"),
        mapping
    );
}

async fn revision_moves_on_every_write_and_only_then(f: &Fixture) {
    let account = account("acme");
    let mut last = f.store().revision().await.expect("revision");
    let store = f.store();

    let mut moved = |step: &str, revision: u64| {
        assert!(revision > last, "{step}: revision {revision} after {last}");
        last = revision;
    };

    let certificate = store
        .create_certificate(f.certificate(&account, "one"))
        .await
        .expect("create");
    moved(
        "create certificate",
        store.revision().await.expect("revision"),
    );
    let renamed = CertificateChange {
        name: Some(entry_name("uno")),
        p12: None,
    };
    store
        .update_certificate(&account, certificate.id, renamed)
        .await
        .expect("update");
    moved(
        "update certificate",
        store.revision().await.expect("revision"),
    );
    let url = "https://partner.example/";
    let mapping = store
        .create_mapping(&account, spec("idp", "IDP", url, certificate.id))
        .await
        .expect("map");
    moved("create mapping", store.revision().await.expect("revision"));
    store
        .update_mapping(
            &account,
            mapping.id,
            spec("idp", "IDP", "https://b.example/", certificate.id),
        )
        .await
        .expect("update mapping");
    moved("update mapping", store.revision().await.expect("revision"));

    let before_reads = store.revision().await.expect("revision");
    contents(store).await;
    store
        .certificate_secret(&account, certificate.id)
        .await
        .expect("secret");
    store.mapping(&account, mapping.id).await.expect("mapping");
    assert_eq!(
        store.revision().await.expect("revision"),
        before_reads,
        "reads moved it"
    );

    store
        .delete_mapping(&account, mapping.id)
        .await
        .expect("delete mapping");
    moved("delete mapping", store.revision().await.expect("revision"));
    store
        .delete_certificate(&account, certificate.id, false)
        .await
        .expect("delete certificate");
    moved(
        "delete certificate",
        store.revision().await.expect("revision"),
    );
}

async fn refused_writes_leave_the_store_as_it_was(f: &Fixture) {
    let (account, stranger) = (account("acme"), account("stranger"));
    let store = f.store();
    let a = store
        .create_certificate(f.certificate(&account, "a"))
        .await
        .expect("create");
    let b = store
        .create_certificate(f.certificate(&account, "b"))
        .await
        .expect("create");
    let foreign = store
        .create_certificate(f.certificate(&stranger, "x"))
        .await
        .expect("create");
    store
        .create_mapping(&account, spec("m1", "IDP", "https://one.example/", a.id))
        .await
        .expect("map");
    let m2 = store
        .create_mapping(&account, spec("m2", "IDP", "https://two.example/", b.id))
        .await
        .expect("map");
    let before = contents(store).await;

    let rename_b_to_a = CertificateChange {
        name: Some(entry_name("a")),
        p12: Some(f.certificate_with(&account, "-", 1).p12),
    };
    let refusals = [
        store
            .create_certificate(f.certificate(&account, "a"))
            .await
            .map(drop),
        store
            .update_certificate(&account, b.id, rename_b_to_a)
            .await
            .map(drop),
        store
            .create_mapping(&account, spec("m1", "IDP", "https://new.example/", a.id))
            .await
            .map(drop),
        store
            .create_mapping(&account, spec("m3", "IDP", "https://one.example/", a.id))
            .await
            .map(drop),
        store
            .update_mapping(
                &account,
                m2.id,
                spec("m9", "IDP", "https://one.example/", a.id),
            )
            .await
            .map(drop),
        store
            .update_mapping(
                &account,
                m2.id,
                spec("m1", "IDP", "https://nine.example/", a.id),
            )
            .await
            .map(drop),
        store
            .create_mapping(
                &account,
                spec("m4", "IDP", "https://four.example/", foreign.id),
            )
            .await
            .map(drop),
        store.delete_certificate(&account, a.id, false).await,
    ];

    for (step, refusal) in refusals.iter().enumerate() {
        assert!(refusal.is_err(), "write {step} was not refused");
    }
    assert_eq!(contents(store).await, before);
    store
        .create_mapping(&account, spec("m9", "IDP", "https://nine.example/", a.id))
        .await
        .expect("names and keys of refused writes were released");
}

async fn lists_the_accounts_that_hold_entries(f: &Fixture) {
    let (first, second) = (account("first"), account("second"));
    assert!(f.store().accounts().await.expect("accounts").is_empty());
    f.store()
        .create_certificate(f.certificate(&first, "partner"))
        .await
        .expect("create");
    let certificate = f
        .store()
        .create_certificate(f.certificate(&second, "partner"))
        .await
        .expect("create");
    let mapping = f
        .store()
        .create_mapping(
            &second,
            spec("idp", "IDP", "https://partner.example/", certificate.id),
        )
        .await
        .expect("map");

    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(f.store().accounts().await.expect("accounts"), both);

    f.store()
        .delete_mapping(&second, mapping.id)
        .await
        .expect("delete");
    f.store()
        .delete_certificate(&second, certificate.id, false)
        .await
        .expect("delete");

    assert_eq!(f.store().accounts().await.expect("accounts"), [first]);
}

async fn names_with_slashes_dots_and_percent_signs_stay_distinct(f: &Fixture) {
    let account = AccountId::new(format!("team a%2F..é-{}", random_hex(3))).expect("valid");
    let (long, long_accented) = ("long-".repeat(40), "é".repeat(100));
    let names = [
        "a/b",
        "a%2Fb",
        "a",
        "..",
        ".",
        "a b",
        "ü/..",
        &long,
        &long_accented,
    ];

    for name in names {
        f.store()
            .create_certificate(f.certificate(&account, name))
            .await
            .unwrap_or_else(|e| panic!("create {name:?}: {e}"));
    }

    let stored: BTreeSet<String> = f
        .store()
        .certificates(&account)
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.name.as_str().to_owned())
        .collect();
    assert_eq!(stored, names.iter().map(|n| n.to_string()).collect());
    for name in names {
        assert_conflict(
            f.store()
                .create_certificate(f.certificate(&account, name))
                .await,
            "certificate name",
            name,
        );
    }
    assert_eq!(f.store().accounts().await.expect("accounts"), [account]);
}

async fn missing_entries_are_reported_as_not_found(f: &Fixture) {
    let account = account("acme");
    let (certificate, mapping) = (CertificateId(424_242), MappingId(434_343));
    let store = f.store();

    assert_not_found(
        store.certificate(&account, certificate).await,
        "certificate",
        424_242,
    );
    assert_not_found(
        store.certificate_secret(&account, certificate).await,
        "certificate",
        424_242,
    );
    assert_not_found(
        store
            .update_certificate(&account, certificate, CertificateChange::default())
            .await,
        "certificate",
        424_242,
    );
    assert_not_found(
        store.delete_certificate(&account, certificate, true).await,
        "certificate",
        424_242,
    );
    assert_not_found(store.mapping(&account, mapping).await, "mapping", 434_343);
    assert_not_found(
        store
            .update_mapping(
                &account,
                mapping,
                spec("m", "IDP", "https://x/", certificate),
            )
            .await,
        "mapping",
        434_343,
    );
    assert_not_found(
        store.delete_mapping(&account, mapping).await,
        "mapping",
        434_343,
    );
    assert!(store.certificates(&account).await.expect("list").is_empty());
    assert!(store.mappings(&account).await.expect("list").is_empty());
}

async fn ids_are_never_reused(f: &Fixture) {
    let account = account("acme");
    let first = f
        .store()
        .create_certificate(f.certificate(&account, "partner"))
        .await
        .expect("create");
    f.store()
        .delete_certificate(&account, first.id, false)
        .await
        .expect("delete");

    let second = f
        .store()
        .create_certificate(f.certificate(&account, "partner"))
        .await
        .expect("create");
    let mapping = f
        .store()
        .create_mapping(
            &account,
            spec("idp", "IDP", "https://x.example/", second.id),
        )
        .await
        .expect("map");

    assert!(second.id > first.id, "{:?} after {:?}", second.id, first.id);
    assert!(mapping.id.0 > second.id.0);
}

async fn certificates_survive_reopening_the_store(f: &Fixture) {
    let account = account("acme");
    let created = f
        .store()
        .create_certificate(f.certificate(&account, "partner"))
        .await
        .expect("create");
    let mapping = f
        .store()
        .create_mapping(
            &account,
            spec("idp", "IDP", "https://x.example/", created.id),
        )
        .await
        .expect("map");
    let revision = f.store().revision().await.expect("revision");

    let reopened = f.backend.open().await;

    assert_eq!(
        reopened
            .certificate(&account, created.id)
            .await
            .expect("read"),
        created
    );
    assert_eq!(reopened.mappings(&account).await.expect("list"), [mapping]);
    assert_eq!(reopened.revision().await.expect("revision"), revision);
    let secret = reopened
        .certificate_secret(&account, created.id)
        .await
        .expect("secret");
    assert_eq!(secret.der, f.p12s[0].0);
    assert_conflict(
        reopened
            .create_certificate(f.certificate(&account, "partner"))
            .await,
        "certificate name",
        "partner",
    );
}

async fn two_replicas_creating_one_name_at_once_let_exactly_one_win(f: &Fixture) {
    let account = account("acme");
    let (one, two) = (f.backend.open().await, f.backend.open().await);

    for round in 0..RACE_ROUNDS {
        let name = format!("race-{round}");

        let (a, b) = tokio::join!(
            one.create_certificate(f.certificate(&account, &name)),
            two.create_certificate(f.certificate_with(&account, &name, 1)),
        );

        let (winner, loser) = match (a, b) {
            (Ok(winner), loser) | (loser, Ok(winner)) => (winner, loser),
            (Err(a), Err(b)) => panic!("round {round}: both failed: {a}; {b}"),
        };
        assert_conflict(loser, "certificate name", &name);
        let holders: Vec<CertificateRecord> = one
            .certificates(&account)
            .await
            .expect("list")
            .into_iter()
            .filter(|c| c.name.as_str() == name)
            .collect();
        assert_eq!(holders, [winner], "round {round}");
    }
}

async fn two_replicas_creating_one_mapping_key_at_once_let_exactly_one_win(f: &Fixture) {
    let account = account("acme");
    let certificate = f
        .store()
        .create_certificate(f.certificate(&account, "partner"))
        .await
        .expect("create");
    let (one, two) = (f.backend.open().await, f.backend.open().await);

    for round in 0..RACE_ROUNDS {
        let url = format!("https://partner.example/{round}");
        let (name_a, name_b) = (format!("a-{round}"), format!("b-{round}"));

        let (a, b) = tokio::join!(
            one.create_mapping(&account, spec(&name_a, "IDP", &url, certificate.id)),
            two.create_mapping(&account, spec(&name_b, "IDP", &url, certificate.id)),
        );

        let (winner, loser, loser_name) = match (a, b) {
            (Ok(winner), loser) => (winner, loser, name_b),
            (loser, Ok(winner)) => (winner, loser, name_a),
            (Err(a), Err(b)) => panic!("round {round}: both failed: {a}; {b}"),
        };
        assert_conflict(loser, "mapping for service and url", &format!("IDP {url}"));
        let holders: Vec<Mapping> = one
            .mappings(&account)
            .await
            .expect("list")
            .into_iter()
            .filter(|m| m.spec.url == url)
            .collect();
        assert_eq!(holders, [winner], "round {round}");
        let other_url = format!("https://elsewhere.example/{round}");
        one.create_mapping(
            &account,
            spec(&loser_name, "IDP", &other_url, certificate.id),
        )
        .await
        .expect("the loser's name claim was released");
    }
}

// Vault only.

/// A store on the shared server with `auth`, under a fresh prefix.
fn vault_config(prefix: &str, auth: VaultAuth) -> VaultConfig {
    let mut config = VaultConfig::new(&OpenBao::shared().address);
    config.prefix = prefix.into();
    config.auth = auth;
    config
}

fn token_file_auth(path: &Path) -> VaultAuth {
    VaultAuth::Token {
        token_file: Some(path.to_owned()),
        token_env: None,
    }
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

#[tokio::test]
async fn vault_unreachable_is_reported_as_unreachable() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let token = dir.path().join("token");
    write_file(&token, "not-a-real-token");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let mut config = VaultConfig::new(format!("http://{closed}"));
    config.auth = token_file_auth(&token);
    config.request_timeout_seconds = 2;

    let error = store::open(&StoreConfig::Vault(config))
        .await
        .expect_err("nothing listens there");

    assert!(matches!(error, StoreError::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains(&closed.to_string()), "{error}");
    assert!(!format!("{error} {error:?}").contains("not-a-real-token"));
}

#[tokio::test]
async fn vault_token_without_rights_is_permission_denied() {
    let bao = OpenBao::shared();
    let prefix = format!("test-{}", random_hex(6));
    let elsewhere = r#"path "secret/data/elsewhere/*" { capabilities = ["read"] }"#;
    let token = bao
        .token_with_policy(&format!("{prefix}-none"), elsewhere)
        .await;
    let dir = tempfile::tempdir().expect("temporary directory");
    write_file(&dir.path().join("token"), &token);
    let config = vault_config(&prefix, token_file_auth(&dir.path().join("token")));

    let error = store::open(&StoreConfig::Vault(config))
        .await
        .expect_err("the policy grants nothing under the prefix");

    match &error {
        StoreError::PermissionDenied { path } => {
            assert_eq!(path, &format!("secret/{prefix}/sequence"));
        }
        other => panic!("expected permission denied, got {other:?}"),
    }
    assert!(!format!("{error} {error:?}").contains(&token), "{error:?}");
}

#[tokio::test]
async fn vault_reads_an_oauth1_consumer_secret_an_operator_wrote() {
    let fixture = Fixture::new(Backend::vault().await).await;
    let Backend::Vault { config, .. } = &fixture.backend else {
        unreachable!("a vault fixture")
    };
    let path = format!("{}/oauth1/consumers/partner-app", config.prefix);
    let secret = serde_json::json!({ "secret": "consumer-secret-4d1f" });
    vaultrs::kv2::set(&OpenBao::shared().root(), "secret", &path, &secret)
        .await
        .expect("the operator writes the secret");

    let found = fixture
        .store()
        .consumer_secret("partner-app")
        .await
        .expect("read");
    let missing = fixture
        .store()
        .consumer_secret("nobody")
        .await
        .expect("read");

    assert_eq!(
        found.map(|s| s.expose_secret().to_owned()).as_deref(),
        Some("consumer-secret-4d1f")
    );
    assert!(missing.is_none());
}

#[tokio::test]
async fn vault_token_with_the_shipped_policy_cannot_read_outside_its_prefix() {
    let bao = OpenBao::shared();
    let prefix = format!("test-{}", random_hex(6));
    let outside = format!("outside-{}", random_hex(6));
    vaultrs::kv2::set(
        &bao.root(),
        "secret",
        &format!("{outside}/secret"),
        &serde_json::json!({ "k": "v" }),
    )
    .await
    .expect("root writes a secret outside the prefix");
    let policy = openbao::store_policy("secret", &prefix);
    let token = bao
        .token_with_policy(&format!("{prefix}-shipped"), &policy)
        .await;

    let inside = vaultrs::kv2::set(
        &bao.client(&token),
        "secret",
        &format!("{prefix}/x"),
        &serde_json::json!({ "k": "v" }),
    )
    .await;
    let read = vaultrs::kv2::read::<serde_json::Value>(
        &bao.client(&token),
        "secret",
        &format!("{outside}/secret"),
    )
    .await;
    let list = vaultrs::kv2::list(&bao.client(&token), "secret", "").await;

    assert!(
        inside.is_ok(),
        "the policy allows writes under the prefix: {inside:?}"
    );
    match read {
        Err(vaultrs::error::ClientError::APIError { code, .. }) => assert_eq!(code, 403),
        other => panic!("a read outside the prefix must be refused, got {other:?}"),
    }
    assert!(list.is_err(), "listing the mount root must be refused");
}

#[tokio::test]
async fn vault_lists_certificates_with_a_token_that_cannot_read_secrets() {
    let fixture = Fixture::new(Backend::vault().await).await;
    let Backend::Vault { config, .. } = &fixture.backend else {
        unreachable!("a vault fixture")
    };
    let account = account("acme");
    let created = fixture
        .store()
        .create_certificate(fixture.certificate(&account, "partner"))
        .await
        .expect("create");
    let prefix = &config.prefix;
    let facts_only = format!(
        r#"path "secret/metadata/{prefix}/*" {{
  capabilities = ["create", "read", "update", "list"]
}}"#
    );
    let token = OpenBao::shared()
        .token_with_policy(&format!("{prefix}-facts"), &facts_only)
        .await;
    let dir = tempfile::tempdir().expect("temporary directory");
    write_file(&dir.path().join("token"), &token);
    let reader = store::open(&StoreConfig::Vault(vault_config(
        prefix,
        token_file_auth(&dir.path().join("token")),
    )))
    .await
    .expect("open with metadata rights only");

    assert_eq!(
        reader.certificates(&account).await.expect("list"),
        std::slice::from_ref(&created)
    );
    assert_eq!(
        reader
            .certificate(&account, created.id)
            .await
            .expect("read"),
        created
    );
    let secret = reader.certificate_secret(&account, created.id).await;
    assert!(
        matches!(secret, Err(StoreError::PermissionDenied { .. })),
        "{secret:?}"
    );
    assert!(format!("{reader:?}").contains(prefix));
    assert!(!format!("{reader:?}").contains(&token));
}

#[tokio::test]
async fn vault_keeps_facts_in_custom_metadata_and_secrets_in_kv_data() {
    let fixture = Fixture::new(Backend::vault().await).await;
    let Backend::Vault { config, .. } = &fixture.backend else {
        unreachable!("a vault fixture")
    };
    let account = AccountId::new(format!("acme-{}", random_hex(3))).expect("valid");
    let created = fixture
        .store()
        .create_certificate(fixture.certificate(&account, "partner/prod"))
        .await
        .expect("create");
    let root = OpenBao::shared().root();
    let entry = format!(
        "{}/accounts/{account}/certificates/{}",
        config.prefix, created.id
    );

    let metadata = vaultrs::kv2::read_metadata(&root, "secret", &entry)
        .await
        .expect("metadata");
    let data: serde_json::Value = vaultrs::kv2::read(&root, "secret", &entry)
        .await
        .expect("data");

    let facts = metadata.custom_metadata.expect("custom metadata");
    assert_eq!(facts["name"], "partner/prod");
    assert_eq!(facts["fingerprint"], created.fingerprint.as_str());
    fixture.assert_no_secret(&format!("{facts:?}"));
    assert_eq!(data["password"], fixture.p12s[0].1.as_str());
    let stored = base64::engine::general_purpose::STANDARD.encode(&fixture.p12s[0].0);
    assert_eq!(data["p12"], stored.as_str());
    let claim = format!(
        "{}/accounts/{account}/names/certificate/partner%2Fprod",
        config.prefix
    );
    let holder: serde_json::Value = vaultrs::kv2::read(&root, "secret", &claim)
        .await
        .expect("the name is claimed under its percent-encoded form");
    assert_eq!(holder["id"], created.id.0);
}

#[tokio::test]
async fn vault_counters_keep_counting_after_old_versions_are_pruned() {
    let fixture = Fixture::new(Backend::vault().await).await;
    let Backend::Vault { config, .. } = &fixture.backend else {
        unreachable!("a vault fixture")
    };
    let account = account("acme");
    let mut ids = Vec::new();

    for round in 0..4 {
        let created = fixture
            .store()
            .create_certificate(fixture.certificate(&account, &format!("c{round}")))
            .await
            .expect("create");
        ids.push(created.id);
    }

    let root = OpenBao::shared().root();
    for counter in ["sequence", "revision"] {
        let path = format!("{}/{counter}", config.prefix);
        let metadata = vaultrs::kv2::read_metadata(&root, "secret", &path)
            .await
            .expect("counter metadata");
        assert_eq!(metadata.max_versions, 1, "{counter}");
        assert_eq!(metadata.versions.len(), 1, "{counter} keeps one version");
        assert!(
            metadata.current_version >= 4,
            "{counter}: {}",
            metadata.current_version
        );
    }
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    let revision =
        vaultrs::kv2::read_metadata(&root, "secret", &format!("{}/revision", config.prefix))
            .await
            .expect("revision metadata")
            .current_version;
    assert_eq!(
        fixture.store().revision().await.expect("revision"),
        revision
    );
}

#[tokio::test]
async fn vault_write_refused_half_way_is_rolled_back() {
    let fixture = Fixture::new(Backend::vault().await).await;
    let Backend::Vault { config, .. } = &fixture.backend else {
        unreachable!("a vault fixture")
    };
    let prefix = &config.prefix;
    // Everything the store needs, except writing a certificate's data: a create gets as far as
    // claiming the name, then fails.
    let no_certificate_data = format!(
        r#"{}
path "secret/data/{prefix}/accounts/+/certificates/*" {{ capabilities = ["deny"] }}
"#,
        openbao::store_policy("secret", prefix)
    );
    let token = OpenBao::shared()
        .token_with_policy(&format!("{prefix}-half"), &no_certificate_data)
        .await;
    let dir = tempfile::tempdir().expect("temporary directory");
    write_file(&dir.path().join("token"), &token);
    let half = store::open(&StoreConfig::Vault(vault_config(
        prefix,
        token_file_auth(&dir.path().join("token")),
    )))
    .await
    .expect("open");
    let account = account("acme");
    fixture
        .store()
        .create_certificate(fixture.certificate(&account, "existing"))
        .await
        .expect("create");
    let before = contents(fixture.store()).await;

    let refused = half
        .create_certificate(fixture.certificate(&account, "partner"))
        .await;

    match &refused {
        Err(StoreError::PermissionDenied { path }) => assert!(path.contains("/certificates/")),
        other => panic!("expected the certificate write refused, got {other:?}"),
    }
    assert_eq!(contents(fixture.store()).await, before);
    fixture
        .store()
        .create_certificate(fixture.certificate(&account, "partner"))
        .await
        .expect("the name claimed by the refused write was released");
}

#[tokio::test]
async fn vault_logs_in_with_approle() {
    let bao = OpenBao::shared();
    let prefix = format!("test-{}", random_hex(6));
    let mount = format!("approle-{}", random_hex(4));
    let policy = openbao::store_policy("secret", &prefix);
    let (role_id, secret_id) = bao.approle(&mount, &prefix, &policy, "1h").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (role_id_file, secret_id_file) = (dir.path().join("role-id"), dir.path().join("secret-id"));
    write_file(&role_id_file, &role_id);
    write_file(&secret_id_file, &secret_id);
    let auth = VaultAuth::Approle {
        mount,
        role_id_file,
        secret_id_file,
    };
    let files = tempfile::tempdir().expect("temporary directory");
    let (p12, _, _) = certs::make_usable(files.path(), "approle.example");

    let store = store::open(&StoreConfig::Vault(vault_config(&prefix, auth)))
        .await
        .expect("log in with approle");
    let account = account("acme");
    let created = store
        .create_certificate(NewCertificate {
            account: account.clone(),
            name: entry_name("partner"),
            p12,
        })
        .await
        .expect("create with the approle token");

    assert_eq!(store.certificates(&account).await.expect("list"), [created]);
    let debug = format!("{store:?}");
    assert!(
        !debug.contains(&secret_id) && !debug.contains(&role_id),
        "{debug}"
    );
}

#[tokio::test]
async fn vault_logs_in_again_when_the_approle_token_expires() {
    let bao = OpenBao::shared();
    let prefix = format!("test-{}", random_hex(6));
    let mount = format!("approle-{}", random_hex(4));
    let policy = openbao::store_policy("secret", &prefix);
    let (role_id, secret_id) = bao.approle(&mount, &prefix, &policy, "2s").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    write_file(&dir.path().join("role-id"), &role_id);
    write_file(&dir.path().join("secret-id"), &secret_id);
    let auth = VaultAuth::Approle {
        mount,
        role_id_file: dir.path().join("role-id"),
        secret_id_file: dir.path().join("secret-id"),
    };
    let store = store::open(&StoreConfig::Vault(vault_config(&prefix, auth)))
        .await
        .expect("log in with approle");
    let before = store
        .revision()
        .await
        .expect("revision with the first token");

    // Real time: the token's TTL runs on the server.
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(
        store.revision().await.expect("revision after a new login"),
        before
    );
}

#[tokio::test]
async fn vault_rereads_a_token_file_that_changes() {
    let bao = OpenBao::shared();
    let prefix = format!("test-{}", random_hex(6));
    let policy = openbao::store_policy("secret", &prefix);
    let good = bao.token_with_policy(&prefix, &policy).await;
    let useless = bao
        .token_with_policy(
            &format!("{prefix}-none"),
            r#"path "x/*" { capabilities = ["read"] }"#,
        )
        .await;
    let also_good = bao.token_with_policy(&prefix, &policy).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("token");
    write_file(&file, &good);
    let store = store::open(&StoreConfig::Vault(vault_config(
        &prefix,
        token_file_auth(&file),
    )))
    .await
    .expect("open with the first token");

    write_file(&file, &format!("{useless}\n"));
    let refused = store.accounts().await;

    assert!(
        matches!(&refused, Err(StoreError::PermissionDenied { .. })),
        "{refused:?}"
    );
    assert!(!format!("{refused:?}").contains(&useless));
    write_file(&file, &also_good);
    store
        .accounts()
        .await
        .expect("the next call uses the new token");
}

// Local only.

/// Every path under `root`, relative, with its permission bits.
fn tree(root: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;

    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let metadata = std::fs::metadata(&path).expect("metadata");
            if metadata.is_dir() {
                pending.push(path.clone());
            }
            let relative = path.strip_prefix(root).expect("under root").to_owned();
            found.push((relative, metadata.permissions().mode() & 0o777));
        }
    }
    found.sort();
    found
}

fn local_root(fixture: &Fixture) -> PathBuf {
    match &fixture.backend {
        Backend::Local { dir } => dir.path().join("store"),
        Backend::Vault { .. } => unreachable!("a local fixture"),
    }
}

#[tokio::test]
async fn local_files_are_private_to_the_owner() {
    let fixture = Fixture::new(Backend::local()).await;
    let account = account("acme");
    let certificate = fixture
        .store()
        .create_certificate(fixture.certificate(&account, "partner"))
        .await
        .expect("create");
    fixture
        .store()
        .create_mapping(
            &account,
            spec("idp", "IDP", "https://x.example/", certificate.id),
        )
        .await
        .expect("map");

    let entries = tree(&local_root(&fixture));

    assert!(entries.len() > 8, "{entries:?}");
    for (path, mode) in entries {
        let expected = if local_root(&fixture).join(&path).is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(mode, expected, "{}", path.display());
    }
}

#[tokio::test]
async fn local_refused_writes_leave_no_file_behind() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store();
    let (account, stranger) = (account("acme"), account("stranger"));
    let certificate = store
        .create_certificate(fixture.certificate(&account, "partner"))
        .await
        .expect("create");
    store
        .create_certificate(fixture.certificate(&account, "other"))
        .await
        .expect("create");
    store
        .create_mapping(
            &account,
            spec("idp", "IDP", "https://x.example/", certificate.id),
        )
        .await
        .expect("map");
    let root = local_root(&fixture);
    let before = tree(&root);

    let renamed = CertificateChange {
        name: Some(entry_name("other")),
        p12: None,
    };
    let refusals = [
        store
            .create_certificate(fixture.certificate(&account, "partner"))
            .await
            .map(drop),
        store
            .update_certificate(&account, certificate.id, renamed)
            .await
            .map(drop),
        store
            .create_mapping(
                &stranger,
                spec("new", "IDP", "https://y.example/", certificate.id),
            )
            .await
            .map(drop),
        store
            .create_mapping(
                &account,
                spec("fresh", "IDP", "https://x.example/", certificate.id),
            )
            .await
            .map(drop),
        store
            .delete_certificate(&account, certificate.id, false)
            .await,
    ];
    let after = tree(&root);

    assert!(refusals.iter().all(Result::is_err), "{refusals:?}");
    assert_eq!(after, before);
}

#[tokio::test]
async fn local_write_failing_half_way_is_rolled_back() {
    let fixture = Fixture::new(Backend::local()).await;
    let account = account("acme");
    fixture
        .store()
        .create_certificate(fixture.certificate(&account, "existing"))
        .await
        .expect("create");
    let root = local_root(&fixture);
    let certificates = root.join(format!("accounts/{account}/certificates"));
    // A file where the certificates directory belongs: a create gets as far as claiming the
    // name, then cannot write the certificate.
    std::fs::rename(&certificates, root.join("aside")).expect("move the directory aside");
    write_file(&certificates, "in the way");
    let before = tree(&root);

    let refused = fixture
        .store()
        .create_certificate(fixture.certificate(&account, "partner"))
        .await;

    assert!(matches!(refused, Err(StoreError::Io { .. })), "{refused:?}");
    assert_eq!(tree(&root), before);
    std::fs::remove_file(&certificates).expect("remove the blocker");
    std::fs::rename(root.join("aside"), &certificates).expect("put the directory back");
    fixture
        .store()
        .create_certificate(fixture.certificate(&account, "partner"))
        .await
        .expect("the name claimed by the failed write was released");
}

#[tokio::test]
async fn local_lists_never_open_the_secret_file() {
    let fixture = Fixture::new(Backend::local()).await;
    let account = account("acme");
    let created = fixture
        .store()
        .create_certificate(fixture.certificate(&account, "partner"))
        .await
        .expect("create");
    let secret = local_root(&fixture).join(format!(
        "accounts/{account}/certificates/{}.secret.json",
        created.id
    ));
    assert!(secret.is_file(), "{}", secret.display());
    write_file(&secret, "not json");

    assert_eq!(
        fixture.store().certificates(&account).await.expect("list"),
        std::slice::from_ref(&created)
    );
    assert_eq!(
        fixture
            .store()
            .certificate(&account, created.id)
            .await
            .expect("read"),
        created
    );
    let broken = fixture
        .store()
        .certificate_secret(&account, created.id)
        .await;
    assert!(
        matches!(broken, Err(StoreError::Malformed { .. })),
        "{broken:?}"
    );
}
