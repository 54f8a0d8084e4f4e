//! The compatible admin routes through the running gateway: the real binary on a real OpenBao,
//! real P12 files, a real mTLS partner and a real HTTP client.
//!
//! Each test starts its own gateway on a fresh Vault prefix, drives it only through the wire
//! contract of `reference/compat-api.md`, and checks what a client sees (statuses, headers,
//! exact field names) and, after every refusal, that the store holds exactly what it held
//! before, revision included.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::admin::{
    admin_addr, keys, send, Answer, Api, TestVault, NARROW_ACCOUNT, NARROW_TOKEN, READER_TOKEN,
};
use support::fixtures;
use support::gateway::{free_port, Gateway};
use support::partner::{Partner, PartnerOptions, SeenRequest};
use support::pki::{ClientCa, ClientCert, Pki};

/// The whole path from an uploaded file to a forwarded call must fit in this.
const UPLOAD_TO_FORWARD: Duration = Duration::from_secs(1);

const CERTIFICATE_FIELDS: [&str; 7] = [
    "id",
    "deleted",
    "name",
    "displayName",
    "siteId",
    "status",
    "expirationDate",
];

const MAPPING_FIELDS: [&str; 8] = [
    "id",
    "certificationId",
    "serviceId",
    "enable",
    "url",
    "siteId",
    "name",
    "deleted",
];

/// A test's PKI, partner-side store and gateway.
struct World {
    certs: Pki,
    vault: TestVault,
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(label: &str) -> World {
        let dir = tempfile::tempdir().expect("a directory for the PKI");
        let certs = Pki::new(dir.path());
        let vault = TestVault::new(label).await;
        let gateway = vault.start_gateway(certs.server_ca_pem_path());
        World {
            certs,
            vault,
            gateway,
            _dir: dir,
        }
    }

    /// A client of the admin listener itself.
    fn admin(&self) -> Api {
        Api::new(format!("http://{}", admin_addr(&self.gateway)))
    }

    /// A client of the proxy listener, which passes compatible admin paths on.
    fn proxy(&self) -> Api {
        Api::new(self.gateway.base_url())
    }

    fn client(&self, cn: &str) -> ClientCert {
        self.certs.client(ClientCa::A, cn, None)
    }

    /// A partner with the trusted `localhost` certificate that demands a client certificate
    /// from `client_ca`.
    fn partner(&self, client_ca: ClientCa) -> Partner {
        Partner::start(PartnerOptions {
            server: self.certs.server_cert(),
            client_ca: Some(self.certs.client_ca_pem(client_ca)),
        })
    }
}

fn certificates(account: &str) -> String {
    format!("/mtls/account/{account}/certificates")
}

fn mappings(account: &str) -> String {
    format!("/api/account/{account}/configuration/ac-common/mtls")
}

fn activate(account: &str, certificate: &str, validate: bool) -> String {
    format!(
        "/mtls/account/{account}/certificates/activate/{certificate}\
         ?isValidateUrlEnabled={validate}"
    )
}

/// The file's bytes as a Java client sends them: signed.
fn java_bytes(der: &[u8]) -> Vec<i64> {
    der.iter()
        .map(|&b| i64::from(i8::from_ne_bytes([b])))
        .collect()
}

/// The one certificate a successful by-file upload saved.
fn saved_one(answer: &Answer, status: StatusCode) -> Value {
    assert_eq!(answer.status, status, "{}", answer.text);
    let body = answer.json();
    assert_eq!(
        keys(&body),
        set(&[
            "successfulySavedCertificates",
            "failedSaveToVaultCertificates"
        ])
    );
    assert_eq!(body["failedSaveToVaultCertificates"], json!([]));
    let saved = body["successfulySavedCertificates"]
        .as_array()
        .expect("an array")
        .clone();
    assert_eq!(saved.len(), 1, "{body}");
    saved[0].clone()
}

/// Uploads `cert` by file under `name`; returns its id as the mappings name it.
async fn upload(api: &Api, account: &str, cert: &ClientCert, name: &str) -> String {
    let certificate = json!({ "name": name, "password": cert.password });
    let answer = api
        .by_file(Method::POST, account, cert.der.clone(), &certificate)
        .await;
    saved_one(&answer, StatusCode::CREATED)["id"]
        .as_u64()
        .expect("a numeric id")
        .to_string()
}

/// Maps `service_id` + `url` to `certificate` through the mapping CRUD route.
async fn map(api: &Api, account: &str, certificate: &str, service_id: &str, url: &str) -> Value {
    let body = json!([{ "certificationId": certificate, "serviceId": service_id, "url": url }]);
    let answer = api
        .json(Method::POST, &format!("{}?v=3.0", mappings(account)), &body)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    answer.json()[0].clone()
}

/// A forward call that must present a mapped certificate.
async fn forward(api: &Api, account: &str, service: &str, url: &str) -> SeenRequest {
    let request = api
        .request(Method::GET, &format!("/mtls/account/{account}"))
        .header("LP-forward-url", url)
        .header("LP-service-name", service)
        .header("LP-stop-if-certificate-not-found", "true");
    let answer = send(request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    serde_json::from_str(&answer.text).expect("the partner's answer")
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// Asserts the store holds for `account` what it held in `before`.
async fn assert_unchanged(
    vault: &TestVault,
    account: &str,
    before: &support::admin::StoreContents,
    after: &str,
) {
    let now = vault.contents(account).await;
    assert_eq!(&now, before, "the store changed after {after}");
}

fn problem_codes(report: &Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems in {report}"))
        .iter()
        .map(|finding| finding["code"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn leaf_not_after(cert: &ClientCert) -> i64 {
    let (_, leaf) = x509_parser::parse_x509_certificate(&cert.leaf_der).expect("a leaf");
    leaf.validity().not_after.timestamp()
}

fn timestamp(rfc3339: &Value) -> i64 {
    let text = rfc3339
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {rfc3339}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .unix_timestamp()
}

// ------------------------------------------------------------------------------------------
// The happy flow.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_tested_uploaded_and_mapped_certificate_is_presented_within_a_second() {
    // Arrange: a partner that demands a certificate from client CA A, and such a P12.
    let world = World::start("compat-happy").await;
    let partner = world.partner(ClientCa::A);
    let cert = world.client("happy-client");
    let (admin, proxy) = (world.admin(), world.proxy());
    let account = "le1606809";
    let (idp_url, webhooks_url) = (partner.url("/idp?x=1"), partner.url("/webhooks"));

    // Act: test, upload, activate with validation, map by CRUD, check, forward.
    let tested = admin
        .test_p12(account, cert.der.clone(), &cert.password)
        .await;
    let uploaded = admin
        .by_file(
            Method::POST,
            account,
            cert.der.clone(),
            &json!({ "name": "happy", "password": cert.password }),
        )
        .await;
    let uploaded_at = Instant::now();
    let id = saved_one(&uploaded, StatusCode::CREATED)["id"].to_string();
    let activated = admin
        .json(
            Method::POST,
            &activate(account, &id, true),
            &json!({ "serviceName": "IDP", "url": idp_url }),
        )
        .await;
    let mapped = map(&admin, account, &id, "2", &webhooks_url).await;
    let questions = json!([
        { "serviceName": "IDP", "accountId": account, "url": idp_url },
        { "serviceName": "WEBHOOKS", "accountId": account, "url": webhooks_url },
        { "serviceName": "IDP", "accountId": account, "url": partner.url("/other") },
    ]);
    let v1 = admin
        .json(Method::POST, "/mtls/mapping?v=1", &questions)
        .await;
    let v2 = admin
        .json(Method::POST, "/mtls/mapping?v=2", &questions)
        .await;
    let per_account = admin
        .json(
            Method::POST,
            &format!("/api/account/{account}/checks/serviceUrlMappings"),
            &json!([
                { "serviceName": "IDP", "url": idp_url },
                { "serviceName": "WEBHOOKS", "url": partner.url("/other") },
            ]),
        )
        .await;
    let seen = forward(&proxy, account, "IDP", &idp_url).await;
    let elapsed = uploaded_at.elapsed();
    let seen_webhooks = forward(&proxy, account, "WEBHOOKS", &webhooks_url).await;

    // Assert: each step answered as documented and the partner saw the uploaded certificate.
    assert_eq!(tested.status, StatusCode::OK, "{}", tested.text);
    assert_eq!(tested.json()["verdict"], "usable");
    assert_eq!(activated.status, StatusCode::CREATED, "{}", activated.text);
    let activated = activated.json();
    assert_eq!(activated["certificationId"], json!(id));
    assert_eq!(activated["serviceId"], "1");
    assert_eq!(activated["name"], json!(format!("IDP:{idp_url}")));
    assert_eq!(mapped["serviceId"], "2");
    let key = |url: &str, service: &str| {
        format!(
            "CertificateMappingParamters{{serviceName='{service}', accountId='{account}', \
             url='{url}'}}"
        )
    };
    assert_eq!(
        v1.json(),
        json!({
            key(&idp_url, "IDP"): true,
            key(&webhooks_url, "WEBHOOKS"): true,
            key(&partner.url("/other"), "IDP"): false,
        })
    );
    let exists: Vec<Value> = v2
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|answer| answer["doExist"].clone())
        .collect();
    assert_eq!(exists, [json!(true), json!(true), json!(false)]);
    let exist: Vec<Value> = per_account
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|answer| answer["exist"].clone())
        .collect();
    assert_eq!(exist, [json!(true), json!(false)]);
    assert_eq!(seen.fingerprint.as_deref(), Some(cert.fingerprint.as_str()));
    assert_eq!(seen.path, "/idp?x=1");
    assert_eq!(
        seen_webhooks.fingerprint.as_deref(),
        Some(cert.fingerprint.as_str())
    );
    assert!(
        elapsed < UPLOAD_TO_FORWARD,
        "upload to forward took {elapsed:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Every route, its shape, through the proxy listener.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_compatible_route_answers_its_documented_shape_through_the_proxy_listener() {
    // Arrange: one client of the proxy listener's base URL, two certificates.
    let world = World::start("compat-shapes").await;
    let api = world.proxy();
    let partner = world.partner(ClientCa::A);
    let account = "52653865";
    let (first, second, third) = (
        world.client("shape-one"),
        world.client("shape-two"),
        world.client("shape-three"),
    );
    let url = partner.url("/pay");

    // #8: the tester answers 200 with the report, and stores nothing.
    let tested = api
        .test_p12(account, first.der.clone(), &first.password)
        .await;
    assert_eq!(tested.status, StatusCode::OK, "{}", tested.text);
    assert_eq!(tested.json()["verdict"], "usable");
    assert_eq!(world.vault.contents(account).await.certificates, []);

    // #1: JSON create with Java's signed bytes.
    let created = api
        .json(
            Method::POST,
            &certificates(account),
            &json!([{
                "name": "by-json", "p12": java_bytes(&first.der), "password": first.password,
            }]),
        )
        .await;
    let by_json = saved_one(&created, StatusCode::CREATED);
    assert_eq!(keys(&by_json), set(&CERTIFICATE_FIELDS));
    assert_eq!(by_json["deleted"], false);
    assert_eq!(by_json["name"], "by-json");
    assert_eq!(by_json["displayName"], "by-json");
    assert_eq!(by_json["siteId"], account);
    assert_eq!(by_json["status"], "Available");
    assert_eq!(
        timestamp(&by_json["expirationDate"]),
        leaf_not_after(&first)
    );
    let json_id = by_json["id"].as_u64().expect("a numeric id");

    // #2: create by file.
    let by_file = saved_one(
        &api.by_file(
            Method::POST,
            account,
            second.der.clone(),
            &json!({ "name": "by-file", "password": second.password }),
        )
        .await,
        StatusCode::CREATED,
    );
    assert_eq!(keys(&by_file), set(&CERTIFICATE_FIELDS));
    let file_id = by_file["id"].as_u64().expect("a numeric id");

    // #5 and #6: list and read, never a P12 or password.
    let listed = api.get(&certificates(account)).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json(), json!([by_json, by_file]));
    let read = api
        .get(&format!("{}/{json_id}", certificates(account)))
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json(), by_json);
    assert!(!listed.text.contains(&first.password) && !listed.text.contains("p12"));

    // #3: JSON update: a new name and a new file.
    let updated = api
        .json(
            Method::PUT,
            &certificates(account),
            &json!([{
                "id": json_id, "name": "by-json-renamed", "p12": java_bytes(&third.der),
                "password": third.password, "deleted": false, "displayName": "by-json",
                "siteId": account,
            }]),
        )
        .await;
    let updated = saved_one(&updated, StatusCode::OK);
    assert_eq!(updated["id"], json!(json_id));
    assert_eq!(updated["name"], "by-json-renamed");
    assert_eq!(
        timestamp(&updated["expirationDate"]),
        leaf_not_after(&third)
    );

    // #4: update by file.
    let replaced = api
        .by_file(
            Method::PUT,
            account,
            first.der.clone(),
            &json!({ "id": file_id, "name": "by-file-renamed", "password": first.password }),
        )
        .await;
    let replaced = saved_one(&replaced, StatusCode::OK);
    assert_eq!(replaced["id"], json!(file_id));
    assert_eq!(replaced["name"], "by-file-renamed");

    // #9: activate without validation.
    let activated = api
        .json(
            Method::POST,
            &activate(account, &json_id.to_string(), false),
            &json!({ "serviceName": "IDP", "url": url }),
        )
        .await;
    assert_eq!(activated.status, StatusCode::CREATED, "{}", activated.text);
    let activated = activated.json();
    assert_eq!(keys(&activated), set(&MAPPING_FIELDS));
    assert_eq!(
        activated,
        json!({
            "id": activated["id"], "certificationId": json_id.to_string(), "serviceId": "1",
            "enable": true, "url": url, "siteId": account, "name": format!("IDP:{url}"),
            "deleted": false,
        })
    );

    // #10: mapping create, list, read, update (collection and one), delete.
    let collection = format!("{}?v=3.0", mappings(account));
    let created = api
        .json(
            Method::POST,
            &collection,
            &json!([{
                "certificationId": file_id.to_string(), "serviceId": "2", "enable": true,
                "url": partner.url("/hooks"), "siteId": account, "name": "hooks",
                "deleted": false,
            }]),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let hooks = created.json()[0].clone();
    assert_eq!(keys(&hooks), set(&MAPPING_FIELDS));
    assert_eq!(hooks["serviceId"], "2");
    assert_eq!(hooks["certificationId"], json!(file_id.to_string()));
    let hooks_id = hooks["id"].as_u64().expect("a numeric id");
    let one = format!("{}/{hooks_id}?v=3.0", mappings(account));
    let listed = api.get(&collection).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json(), json!([activated, hooks]));
    assert_eq!(api.get(&one).await.json(), hooks);
    let disabled = api
        .json(
            Method::PUT,
            &collection,
            &json!([{ "id": hooks_id, "enable": false }]),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.text);
    assert_eq!(disabled.json()[0]["enable"], false);
    let renamed = api
        .json(
            Method::PUT,
            &one,
            &json!({ "name": "hooks-renamed", "enable": true }),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert_eq!(renamed.json()["name"], "hooks-renamed");
    assert_eq!(renamed.json()["enable"], true);

    // #11 v1 and v2, #12: v2 and #12 echo each entry in its own field order.
    // Raw text, since a `json!` object sorts its keys.
    let question =
        format!("[{{\"url\":\"{url}\",\"serviceName\":\"IDP\",\"accountId\":\"{account}\"}}]");
    let ask = |path: &'static str| {
        api.raw(
            Method::POST,
            path,
            "application/json",
            question.clone().into_bytes(),
        )
    };
    let v1 = ask("/mtls/mapping?v=1").await;
    assert_eq!(v1.status, StatusCode::OK, "{}", v1.text);
    let key = format!(
        "CertificateMappingParamters{{serviceName='IDP', accountId='{account}', url='{url}'}}"
    );
    assert_eq!(v1.json(), json!({ key: true }));
    let v2 = ask("/mtls/mapping?v=2").await;
    assert_eq!(v2.status, StatusCode::OK, "{}", v2.text);
    let echoed = format!(
        "[{{\"url\":\"{url}\",\"serviceName\":\"IDP\",\"accountId\":\"{account}\",\
         \"doExist\":true}}]"
    );
    assert_eq!(v2.text, echoed);
    let hooks_url = partner.url("/hooks");
    let urls = api
        .raw(
            Method::POST,
            &format!("/api/account/{account}/checks/serviceUrlMappings"),
            "application/json",
            format!("[{{\"url\":\"{hooks_url}\",\"serviceName\":\"WEBHOOKS\"}}]").into_bytes(),
        )
        .await;
    assert_eq!(urls.status, StatusCode::OK, "{}", urls.text);
    assert_eq!(
        urls.text,
        format!("[{{\"url\":\"{hooks_url}\",\"serviceName\":\"WEBHOOKS\",\"exist\":true}}]")
    );

    // The forward call on the same base URL.
    let seen = forward(&api, account, "IDP", &url).await;
    assert_eq!(
        seen.fingerprint.as_deref(),
        Some(third.fingerprint.as_str())
    );

    // #10 delete, then #7 delete of the certificate it used.
    let deleted = api.delete(&one).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    assert_eq!(deleted.json()["deleted"], true);
    assert_eq!(api.get(&one).await.status, StatusCode::NOT_FOUND);
    let gone = api
        .delete(&format!("{}/{file_id}", certificates(account)))
        .await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.text);
    assert_eq!(keys(&gone.json()), set(&CERTIFICATE_FIELDS));
    assert_eq!(gone.json()["deleted"], true);
    let read = api
        .get(&format!("{}/{file_id}", certificates(account)))
        .await;
    assert_eq!(read.status, StatusCode::NOT_FOUND);
    assert_eq!(read.code(), "not_found");
}

// ------------------------------------------------------------------------------------------
// Refusals: each leaves the store as it was.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn refuses_every_unusable_p12_with_exactly_its_diagnosis_codes_and_stores_nothing() {
    // Arrange: the fixture matrix's unusable rows.
    let world = World::start("compat-unusable").await;
    let api = world.admin();
    let account = "unusable";
    let before = world.vault.contents(account).await;
    let unusable: Vec<_> = fixtures::all()
        .into_iter()
        .filter(|fixture| fixture.verdict == "unusable")
        .collect();
    assert!(
        unusable.len() >= 10,
        "the matrix has {} unusable rows",
        unusable.len()
    );

    for fixture in &unusable {
        // Act: upload by file, and test with the tester.
        let certificate = json!({ "name": fixture.name(), "password": fixture.password_text() });
        let uploaded = api
            .by_file(Method::POST, account, fixture.der(), &certificate)
            .await;
        let tested = api
            .test_p12(account, fixture.der(), &fixture.password_text())
            .await;

        // Assert: 422 with exactly the manifest's problem codes, and nothing stored.
        for answer in [&uploaded, &tested] {
            assert_eq!(
                answer.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{}: {}",
                fixture.name(),
                answer.text
            );
            assert_eq!(answer.code(), "unusable_p12");
            assert_eq!(
                problem_codes(&answer.json()["detail"]),
                fixture.problems,
                "{}",
                fixture.name()
            );
        }
        assert_unchanged(&world.vault, account, &before, &fixture.name()).await;
    }

    // The same by JSON: no entry saved, so the answer is the refusal, each entry listed.
    let fixture = &unusable[0];
    let body = json!([{
        "name": fixture.name(), "p12": java_bytes(&fixture.der()),
        "password": fixture.password_text(),
    }]);
    let refused = api.json(Method::POST, &certificates(account), &body).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert_eq!(refused.code(), "unusable_p12");
    let failed = &refused.json()["detail"]["failedSaveToVaultCertificates"][0];
    assert_eq!(failed["name"], json!(fixture.name()));
    assert_eq!(failed["code"], "unusable_p12");
    assert_eq!(problem_codes(&failed["detail"]), fixture.problems);
    assert_unchanged(&world.vault, account, &before, "a JSON upload").await;
}

#[tokio::test]
async fn saves_the_usable_entries_of_a_batch_and_lists_the_others_as_failed() {
    // Arrange: one usable P12, one that is not a P12, one whose name is taken.
    let world = World::start("compat-batch").await;
    let api = world.admin();
    let account = "batch";
    let (good, taken) = (world.client("batch-good"), world.client("batch-taken"));
    upload(&api, account, &taken, "taken").await;
    let body = json!([
        { "name": "good", "p12": java_bytes(&good.der), "password": good.password },
        { "name": "garbage", "p12": [1, 2, 3], "password": "x" },
        { "name": "taken", "p12": java_bytes(&taken.der), "password": taken.password },
    ]);

    // Act.
    let answer = api.json(Method::POST, &certificates(account), &body).await;

    // Assert: 201, the good one saved, the others listed with their codes.
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    let body = answer.json();
    let saved = body["successfulySavedCertificates"]
        .as_array()
        .expect("an array");
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0]["name"], "good");
    let failed = body["failedSaveToVaultCertificates"]
        .as_array()
        .expect("an array");
    let outcomes: Vec<(Value, Value)> = failed
        .iter()
        .map(|entry| (entry["name"].clone(), entry["code"].clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (json!("garbage"), json!("unusable_p12")),
            (json!("taken"), json!("conflict"))
        ]
    );
    let names: Vec<String> = world
        .vault
        .contents(account)
        .await
        .certificates
        .iter()
        .map(|record| record.name.to_string())
        .collect();
    assert_eq!(names, ["taken", "good"]);
}

#[tokio::test]
async fn refuses_duplicate_names_and_mapping_keys_with_409_and_stores_nothing() {
    // Arrange: a certificate and a mapping.
    let world = World::start("compat-duplicates").await;
    let api = world.admin();
    let account = "dupes";
    let (cert, other) = (world.client("dupe-one"), world.client("dupe-two"));
    let id = upload(&api, account, &cert, "dupe").await;
    let url = "https://localhost:9/pay";
    map(&api, account, &id, "1", url).await;
    let before = world.vault.contents(account).await;
    let collection = format!("{}?v=3.0", mappings(account));

    // Act and assert, one refusal at a time.
    let by_file = api
        .by_file(
            Method::POST,
            account,
            other.der.clone(),
            &json!({ "name": "dupe", "password": other.password }),
        )
        .await;
    assert_eq!(by_file.status, StatusCode::CONFLICT, "{}", by_file.text);
    assert_eq!(by_file.code(), "conflict");
    assert!(by_file.json()["message"]
        .as_str()
        .unwrap_or_default()
        .contains("dupe"));
    assert_unchanged(&world.vault, account, &before, "a by-file duplicate name").await;

    let by_json = api
        .json(
            Method::POST,
            &certificates(account),
            &json!([{ "name": "dupe", "p12": java_bytes(&other.der), "password": other.password }]),
        )
        .await;
    assert_eq!(by_json.status, StatusCode::CONFLICT, "{}", by_json.text);
    assert_eq!(by_json.code(), "conflict");
    assert_unchanged(&world.vault, account, &before, "a JSON duplicate name").await;

    let same_key = api
        .json(
            Method::POST,
            &collection,
            &json!([{ "certificationId": id, "serviceId": "1", "url": url, "name": "another" }]),
        )
        .await;
    assert_eq!(same_key.status, StatusCode::CONFLICT, "{}", same_key.text);
    assert_eq!(same_key.code(), "conflict");
    assert_unchanged(&world.vault, account, &before, "a duplicate mapping key").await;

    let same_name = api
        .json(
            Method::POST,
            &collection,
            &json!([{
                "certificationId": id, "serviceId": "2", "url": url, "name": format!("IDP:{url}"),
            }]),
        )
        .await;
    assert_eq!(same_name.status, StatusCode::CONFLICT, "{}", same_name.text);
    assert_eq!(same_name.code(), "conflict");
    assert_unchanged(&world.vault, account, &before, "a duplicate mapping name").await;

    let activated = api
        .json(
            Method::POST,
            &activate(account, &id, false),
            &json!({ "serviceName": "IDP", "url": url }),
        )
        .await;
    assert_eq!(activated.status, StatusCode::CONFLICT, "{}", activated.text);
    assert_unchanged(&world.vault, account, &before, "activating a mapped key").await;
}

#[tokio::test]
async fn refuses_to_delete_a_certificate_in_use_until_forced() {
    // Arrange: a certificate that a mapping uses.
    let world = World::start("compat-in-use").await;
    let api = world.admin();
    let account = "in-use";
    let cert = world.client("in-use");
    let id = upload(&api, account, &cert, "busy").await;
    let mapping = map(&api, account, &id, "1", "https://localhost:9/busy").await;
    let before = world.vault.contents(account).await;
    let path = format!("{}/{id}", certificates(account));

    // Act: delete, then delete with force.
    let refused = api.delete(&path).await;
    assert_unchanged(&world.vault, account, &before, "a refused delete").await;
    let forced = api.delete(&format!("{path}?force=true")).await;

    // Assert: 409 naming the mapping; the forced delete removes the certificate only.
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert_eq!(refused.code(), "certificate_in_use");
    let message = refused.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(mapping["name"].as_str().unwrap_or("?")),
        "{message}"
    );
    assert_eq!(refused.json()["detail"]["mappings"], json!([mapping]));
    assert_eq!(forced.status, StatusCode::OK, "{}", forced.text);
    let after = world.vault.contents(account).await;
    assert_eq!(after.certificates, []);
    assert_eq!(after.mappings, before.mappings);
}

#[tokio::test]
async fn refuses_oversize_and_malformed_bodies_and_stores_nothing() {
    // Arrange.
    let world = World::start("compat-malformed").await;
    let api = world.admin();
    let account = "malformed";
    let cert = world.client("malformed");
    let id = upload(&api, account, &cert, "kept").await;
    let before = world.vault.contents(account).await;
    let certificate = json!({ "name": "new", "password": cert.password });
    let collection = format!("{}?v=3.0", mappings(account));

    // Each refusal: what was sent, the status and code expected.
    let cases: Vec<(&str, Answer, StatusCode, &str)> = vec![
        (
            "a 1.5 MiB file",
            api.by_file(Method::POST, account, vec![0x30; 3 << 19], &certificate)
                .await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "a file one byte over 1 MiB",
            api.by_file(
                Method::POST,
                account,
                vec![0x30; (1 << 20) + 1],
                &certificate,
            )
            .await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "malformed JSON",
            api.raw(
                Method::POST,
                &certificates(account),
                "application/json",
                b"[{\"name\":".to_vec(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "an object where an array belongs",
            api.json(
                Method::POST,
                &certificates(account),
                &json!({ "name": "x" }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "an unknown field",
            api.json(
                Method::POST,
                &certificates(account),
                &json!([{ "name": "x", "p12": [1], "password": "p", "colour": "red" }]),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "unknown_field",
        ),
        (
            "a missing p12",
            api.json(
                Method::POST,
                &certificates(account),
                &json!([{ "name": "x", "password": "p" }]),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "missing_field",
        ),
        (
            "a byte out of range",
            api.json(
                Method::POST,
                &certificates(account),
                &json!([{ "name": "x", "p12": [1, 256], "password": "p" }]),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "a multipart body that is not multipart",
            api.raw(
                Method::POST,
                &format!("{}/by-file", certificates(account)),
                "multipart/form-data; boundary=XyZ",
                b"this is not a multipart body".to_vec(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_multipart",
        ),
        (
            "JSON sent to the by-file route",
            api.raw(
                Method::POST,
                &format!("{}/by-file", certificates(account)),
                "application/json",
                b"{}".to_vec(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_multipart",
        ),
        (
            "a certificate field that is not JSON",
            api.by_file_text(Method::POST, account, cert.der.clone(), "name=new".into())
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "a mapping without a URL",
            api.json(
                Method::POST,
                &collection,
                &json!([{ "certificationId": id, "serviceId": "1" }]),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "missing_field",
        ),
        (
            "a mapping to a plain http URL",
            api.json(
                Method::POST,
                &collection,
                &json!([{ "certificationId": id, "serviceId": "1", "url": "http://x.example/" }]),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_url",
        ),
        (
            "a mapping for another account",
            api.json(
                Method::POST,
                &collection,
                &json!([{
                    "certificationId": id, "serviceId": "1", "url": "https://x.example/",
                    "siteId": "someone-else",
                }]),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "account_mismatch",
        ),
        (
            "malformed check mapping JSON",
            api.raw(
                Method::POST,
                "/mtls/mapping?v=2",
                "application/json",
                b"[{".to_vec(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ];

    // Assert: every case refused as expected, and the store never changed.
    for (what, answer, status, code) in cases {
        assert_eq!(answer.status, status, "{what}: {}", answer.text);
        assert_eq!(answer.code(), code, "{what}: {}", answer.text);
        assert!(!answer.json()["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty());
        assert_unchanged(&world.vault, account, &before, what).await;
    }
}

#[tokio::test]
async fn check_mapping_refuses_accounts_outside_the_callers_scope() {
    // Arrange.
    let world = World::start("compat-check-scope").await;
    let narrow = world.admin().with_token(Some(NARROW_TOKEN));
    let url = "https://p.example/";
    let question =
        |account: &str| json!([{ "serviceName": "IDP", "accountId": account, "url": url }]);

    // Act.
    let own = narrow
        .json(Method::POST, "/mtls/mapping?v=2", &question(NARROW_ACCOUNT))
        .await;
    let other = narrow
        .json(Method::POST, "/mtls/mapping?v=2", &question("someone-else"))
        .await;

    // Assert.
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.text);
    assert!(other.text.contains("someone-else"), "{}", other.text);
}

#[tokio::test]
async fn refuses_missing_wrong_and_insufficient_credentials() {
    // Arrange.
    let world = World::start("compat-credentials").await;
    let api = world.admin();
    let account = "credentials";
    let cert = world.client("credentials");
    let before = world.vault.contents(account).await;
    let upload_as = |token: Option<&str>| {
        let api = api.with_token(token);
        let der = cert.der.clone();
        let certificate = json!({ "name": "x", "password": cert.password });
        async move { api.by_file(Method::POST, account, der, &certificate).await }
    };

    // Act.
    let missing = api.with_token(None).get(&certificates(account)).await;
    let wrong = upload_as(Some("not-a-token")).await;
    let reader = upload_as(Some(READER_TOKEN)).await;
    let narrow = upload_as(Some(NARROW_TOKEN)).await;
    let reader_lists = api
        .with_token(Some(READER_TOKEN))
        .get(&certificates(account))
        .await;
    let reader_json = api
        .with_token(Some(READER_TOKEN))
        .json(Method::POST, &certificates(account), &json!([]))
        .await;
    let narrow_own = api
        .with_token(Some(NARROW_TOKEN))
        .get(&certificates(NARROW_ACCOUNT))
        .await;

    // Assert.
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{}", missing.text);
    assert!(missing.header("www-authenticate").starts_with("Bearer"));
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.text);
    assert!(!wrong.header("www-authenticate").is_empty());
    assert_eq!(reader.status, StatusCode::FORBIDDEN, "{}", reader.text);
    assert_eq!(narrow.status, StatusCode::FORBIDDEN, "{}", narrow.text);
    assert_eq!(reader_lists.status, StatusCode::OK, "{}", reader_lists.text);
    assert_eq!(
        reader_json.status,
        StatusCode::FORBIDDEN,
        "{}",
        reader_json.text
    );
    assert_eq!(narrow_own.status, StatusCode::OK, "{}", narrow_own.text);
    assert_unchanged(&world.vault, account, &before, "refused credentials").await;
}

#[tokio::test]
async fn refuses_activation_when_the_url_cannot_be_reached_and_maps_nothing() {
    // Arrange: a closed port, and a partner that trusts only client CA B.
    let world = World::start("compat-unreachable").await;
    let api = world.admin();
    let account = "unreachable";
    let cert = world.client("unreachable");
    let id = upload(&api, account, &cert, "lonely").await;
    let picky = world.partner(ClientCa::B);
    let before = world.vault.contents(account).await;
    let closed = format!("https://127.0.0.1:{}/pay", free_port());

    // Act.
    let refused = api
        .json(
            Method::POST,
            &activate(account, &id, true),
            &json!({ "serviceName": "IDP", "url": closed }),
        )
        .await;
    assert_unchanged(&world.vault, account, &before, "an unreachable URL").await;
    let rejected = api
        .json(
            Method::POST,
            &activate(account, &id, true),
            &json!({ "serviceName": "IDP", "url": picky.url("/pay") }),
        )
        .await;

    // Assert: 424 with the transport headers, and no mapping.
    for answer in [&refused, &rejected] {
        assert_eq!(
            answer.status,
            StatusCode::FAILED_DEPENDENCY,
            "{}",
            answer.text
        );
        assert!(
            !answer.header("lp-error-from-transport").is_empty(),
            "{:?}",
            answer.headers
        );
        assert!(
            !answer.header("lp-message-from-transport").is_empty(),
            "{:?}",
            answer.headers
        );
        assert_eq!(answer.code(), answer.header("lp-error-from-transport"));
    }
    assert_eq!(
        refused.header("lp-error-from-transport"),
        "connection_refused"
    );
    assert_unchanged(&world.vault, account, &before, "a rejected certificate").await;
}
