//! A small PKI made with the real `openssl` CLI at test time: the CA a partner's server
//! certificate chains to, a CA the gateway must not trust, and two client CAs that issue the
//! identities the gateway presents.
//!
//! Every key is EC P-256, so a test binary can issue dozens of client certificates in well
//! under a second. Serial numbers are written as lowercase hex without colons or leading zeros
//! (4660 is `"1234"`), the same form [`leaf_facts`] and the partner report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::certs::random_hex;

/// Extensions for every certificate this module makes. `$ENV::PKI_SAN` lets one file serve
/// server certificates for any name; every command sets it, because OpenSSL refuses a config
/// that names an unset variable.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $ENV::PKI_SAN
authorityKeyIdentifier = keyid

[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
";

/// The SAN of the partner's own server certificate: what `https://localhost:PORT` and
/// `https://127.0.0.1:PORT` both verify against.
const LOCALHOST_SAN: &str = "DNS:localhost,IP:127.0.0.1";

/// Which of the two client CAs issues a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientCa {
    A,
    B,
}

impl ClientCa {
    fn common_name(self) -> &'static str {
        match self {
            ClientCa::A => "Client CA A",
            ClientCa::B => "Client CA B",
        }
    }
}

/// A CA's certificate and key, as files.
#[derive(Debug, Clone)]
struct Authority {
    cert_pem_path: PathBuf,
    key_pem_path: PathBuf,
}

/// A server certificate (leaf only in the chain; the CA is what clients trust) and its key.
#[derive(Clone)]
pub struct ServerCert {
    pub chain_pem_path: PathBuf,
    pub key_pem_path: PathBuf,
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("chain_pem_path", &self.chain_pem_path)
            .field("key_pem_path", &self.key_pem_path)
            .finish_non_exhaustive()
    }
}

/// A client identity issued by one of the client CAs, as a P12 and as PEM files.
#[derive(Clone)]
pub struct ClientCert {
    /// `openssl pkcs12 -export` output, leaf + key + issuing CA, OpenSSL 3 defaults (PBES2
    /// AES-256, SHA-256 MAC).
    pub p12_path: PathBuf,
    /// The password alone, no trailing newline.
    pub password_path: PathBuf,
    /// The bytes of `p12_path`.
    pub der: Vec<u8>,
    pub password: String,
    /// The leaf alone.
    pub cert_pem_path: PathBuf,
    /// PKCS#8 PEM.
    pub key_pem_path: PathBuf,
    pub leaf_der: Vec<u8>,
    /// Lowercase hex SHA-256 of `leaf_der`.
    pub fingerprint: String,
    /// Lowercase hex, no colons, no leading zeros.
    pub serial_hex: String,
    pub subject_cn: String,
    pub issuer_cn: String,
}

impl ClientCert {
    /// Key and leaf in one PEM buffer, as `reqwest::Identity::from_pem` takes them.
    pub fn identity_pem(&self) -> Vec<u8> {
        let mut pem = std::fs::read(&self.key_pem_path).expect("read the client key");
        pem.extend(std::fs::read(&self.cert_pem_path).expect("read the client certificate"));
        pem
    }
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("subject_cn", &self.subject_cn)
            .field("issuer_cn", &self.issuer_cn)
            .field("serial_hex", &self.serial_hex)
            .field("fingerprint", &self.fingerprint)
            .field("p12_path", &self.p12_path)
            .finish_non_exhaustive()
    }
}

/// Subject CN, issuer CN and serial of a certificate, in the forms this module uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    /// The subject's CN, or the whole subject when it has no CN.
    pub subject: String,
    /// The issuer's CN, or the whole issuer when it has no CN.
    pub issuer: String,
    /// Lowercase hex, no colons, no leading zeros.
    pub serial_hex: String,
}

/// Reads the facts tests compare from a DER certificate.
pub fn leaf_facts(der: &[u8]) -> LeafFacts {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).expect("a DER certificate");
    let name = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok().map(str::to_owned))
            .unwrap_or_else(|| name.to_string())
    };
    LeafFacts {
        subject: name(certificate.subject()),
        issuer: name(certificate.issuer()),
        serial_hex: format!("{:x}", certificate.tbs_certificate.serial),
    }
}

/// Lowercase hex SHA-256 of `der`.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The CAs and the partner's server certificates, in a directory the caller owns.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    config: PathBuf,
    server_ca: Authority,
    other_server_ca: Authority,
    client_ca_a: Authority,
    client_ca_b: Authority,
    server: ServerCert,
    other_server: ServerCert,
}

impl Pki {
    /// Makes the four CAs, a `localhost` server certificate under the server CA and another
    /// under the CA the gateway must not trust.
    pub fn new(dir: &Path) -> Pki {
        let config = dir.join("pki-openssl.cnf");
        std::fs::write(&config, OPENSSL_CONFIG).expect("write the openssl config");
        let authority = |stem: &str, cn: &str| make_authority(&config, dir, stem, cn);
        let server_ca = authority("server-ca", "Partner Server CA");
        let other_server_ca = authority("other-server-ca", "Untrusted Server CA");
        let client_ca_a = authority("client-ca-a", ClientCa::A.common_name());
        let client_ca_b = authority("client-ca-b", ClientCa::B.common_name());

        let issue = |ca: &Authority, stem: &str| {
            let leaf = Leaf {
                cn: "localhost",
                san: LOCALHOST_SAN,
            };
            issue_server(&config, ca, &dir.join(stem), &leaf)
        };
        let server = issue(&server_ca, "server");
        let other_server = issue(&other_server_ca, "other-server");

        Pki {
            dir: dir.to_owned(),
            config,
            server_ca,
            other_server_ca,
            client_ca_a,
            client_ca_b,
            server,
            other_server,
        }
    }

    /// The partner's `localhost` certificate, chaining to [`Pki::server_ca_pem_path`].
    pub fn server_cert(&self) -> ServerCert {
        self.server.clone()
    }

    /// A `localhost` certificate from a CA the gateway does not trust.
    pub fn other_server_cert(&self) -> ServerCert {
        self.other_server.clone()
    }

    /// The CA the gateway should trust for the partner.
    pub fn server_ca_pem_path(&self) -> &Path {
        &self.server_ca.cert_pem_path
    }

    pub fn server_ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.server_ca_pem_path()).expect("read the server CA")
    }

    /// The CA of [`Pki::other_server_cert`].
    pub fn other_server_ca_pem_path(&self) -> &Path {
        &self.other_server_ca.cert_pem_path
    }

    pub fn client_ca_pem_path(&self, ca: ClientCa) -> &Path {
        &self.client_authority(ca).cert_pem_path
    }

    /// The client CA's certificate, as `PartnerOptions::client_ca` takes it.
    pub fn client_ca_pem(&self, ca: ClientCa) -> Vec<u8> {
        std::fs::read(self.client_ca_pem_path(ca)).expect("read the client CA")
    }

    /// A `localhost` certificate under the server CA, valid only in January 2020.
    pub fn server_cert_expired(&self) -> ServerCert {
        let stem = self.unique_stem("server-expired");
        issue_expired_server(&self.config, &self.server_ca, &stem)
    }

    /// A certificate under the server CA for `name` only (a DNS name or an IP literal): the
    /// partner answers on localhost with it to provoke a name mismatch.
    pub fn server_cert_for(&self, name: &str) -> ServerCert {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(_) => format!("IP:{name}"),
            Err(_) => format!("DNS:{name}"),
        };
        let stem = self.unique_stem("server-for");
        let leaf = Leaf {
            cn: name,
            san: &san,
        };
        issue_server(&self.config, &self.server_ca, &stem, &leaf)
    }

    /// Issues a client certificate with a fresh key under `ca`. With `serial`, the
    /// certificate has exactly that serial number, so two calls with the same CA and serial
    /// give two identities that differ only in key (and fingerprint).
    pub fn client(&self, ca: ClientCa, cn: &str, serial: Option<u64>) -> ClientCert {
        let authority = self.client_authority(ca);
        let stem = self.unique_stem("client");
        let paths = |extension: &str| stem.with_extension(extension);
        let (cert_pem_path, key_pem_path) = (paths("crt"), paths("key"));
        let (p12_path, password_path) = (paths("p12"), paths("password"));
        let serial = serial.unwrap_or_else(random_serial);

        let mut request = openssl(&self.config, LOCALHOST_SAN);
        request
            .args([
                "req",
                "-x509",
                "-new",
                "-extensions",
                "client_ext",
                "-days",
                "365",
            ])
            .args([
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-noenc",
            ])
            .arg("-subj")
            .arg(format!("/CN={cn}"))
            .arg("-set_serial")
            .arg(serial.to_string())
            .arg("-CA")
            .arg(&authority.cert_pem_path)
            .arg("-CAkey")
            .arg(&authority.key_pem_path)
            .arg("-keyout")
            .arg(&key_pem_path)
            .arg("-out")
            .arg(&cert_pem_path);
        run(&mut request);

        let password = random_hex(12);
        std::fs::write(&password_path, &password).expect("write the password file");
        let mut export = openssl(&self.config, LOCALHOST_SAN);
        export
            .args(["pkcs12", "-export", "-inkey"])
            .arg(&key_pem_path)
            .arg("-in")
            .arg(&cert_pem_path)
            .arg("-certfile")
            .arg(&authority.cert_pem_path)
            .arg("-out")
            .arg(&p12_path)
            .arg("-passout")
            .arg(format!("file:{}", password_path.display()));
        run(&mut export);

        let leaf_der = read_certificates(&cert_pem_path).remove(0);
        let facts = leaf_facts(&leaf_der);
        ClientCert {
            der: std::fs::read(&p12_path).expect("read the p12 openssl wrote"),
            password,
            fingerprint: sha256_hex(&leaf_der),
            serial_hex: facts.serial_hex,
            subject_cn: facts.subject,
            issuer_cn: facts.issuer,
            leaf_der,
            p12_path,
            password_path,
            cert_pem_path,
            key_pem_path,
        }
    }

    fn client_authority(&self, ca: ClientCa) -> &Authority {
        match ca {
            ClientCa::A => &self.client_ca_a,
            ClientCa::B => &self.client_ca_b,
        }
    }

    /// A path stem no other call of this process uses, so tests may issue in parallel.
    fn unique_stem(&self, kind: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.dir
            .join(format!("{kind}-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
    }
}

/// What a server leaf says about itself.
struct Leaf<'a> {
    cn: &'a str,
    san: &'a str,
}

fn make_authority(config: &Path, dir: &Path, stem: &str, cn: &str) -> Authority {
    let cert_pem_path = dir.join(format!("{stem}.crt"));
    let key_pem_path = dir.join(format!("{stem}.key"));

    let mut request = openssl(config, LOCALHOST_SAN);
    request
        .args([
            "req",
            "-x509",
            "-new",
            "-extensions",
            "ca_ext",
            "-days",
            "3650",
        ])
        .args([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-noenc",
        ])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key_pem_path)
        .arg("-out")
        .arg(&cert_pem_path);
    run(&mut request);

    Authority {
        cert_pem_path,
        key_pem_path,
    }
}

fn issue_server(config: &Path, ca: &Authority, stem: &Path, leaf: &Leaf<'_>) -> ServerCert {
    let chain_pem_path = stem.with_extension("crt");
    let key_pem_path = stem.with_extension("key");

    let mut request = openssl(config, leaf.san);
    request
        .args([
            "req",
            "-x509",
            "-new",
            "-extensions",
            "server_ext",
            "-days",
            "365",
        ])
        .args([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-noenc",
        ])
        .arg("-subj")
        .arg(format!("/CN={}", leaf.cn))
        .arg("-set_serial")
        .arg(random_serial().to_string())
        .arg("-CA")
        .arg(&ca.cert_pem_path)
        .arg("-CAkey")
        .arg(&ca.key_pem_path)
        .arg("-keyout")
        .arg(&key_pem_path)
        .arg("-out")
        .arg(&chain_pem_path);
    run(&mut request);

    server_cert_from_files(chain_pem_path, key_pem_path)
}

/// OpenSSL 3.0's `req` and `x509` cannot set a start date in the past (`-not_before` arrived
/// in 3.4), so the expired certificate goes through `openssl ca` with a throwaway database.
fn issue_expired_server(config: &Path, ca: &Authority, stem: &Path) -> ServerCert {
    let chain_pem_path = stem.with_extension("crt");
    let key_pem_path = stem.with_extension("key");
    let request_path = stem.with_extension("csr");
    let database = stem.with_extension("ca");
    std::fs::create_dir_all(&database).expect("create the ca database directory");
    std::fs::write(database.join("index.txt"), "").expect("create the ca index");
    std::fs::write(database.join("serial"), "1000\n").expect("create the ca serial file");
    let ca_config = database.join("ca.cnf");
    let ca_section = format!(
        "[ca]\ndefault_ca = expired\n\n[expired]\ndatabase = {db}/index.txt\n\
         new_certs_dir = {db}\nserial = {db}/serial\ndefault_md = sha256\n\
         policy = anything\nunique_subject = no\ncopy_extensions = none\n\n\
         [anything]\ncommonName = supplied\n\n",
        db = database.display(),
    );
    let base = std::fs::read_to_string(config).expect("read the openssl config");
    std::fs::write(&ca_config, ca_section + &base).expect("write the ca config");

    let mut request = openssl(&ca_config, LOCALHOST_SAN);
    request
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-noenc", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key_pem_path)
        .arg("-out")
        .arg(&request_path);
    run(&mut request);

    let mut sign = openssl(&ca_config, LOCALHOST_SAN);
    sign.args(["ca", "-batch", "-notext", "-extensions", "server_ext"])
        .args([
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
        ])
        .arg("-cert")
        .arg(&ca.cert_pem_path)
        .arg("-keyfile")
        .arg(&ca.key_pem_path)
        .arg("-in")
        .arg(&request_path)
        .arg("-out")
        .arg(&chain_pem_path);
    run(&mut sign);

    server_cert_from_files(chain_pem_path, key_pem_path)
}

fn server_cert_from_files(chain_pem_path: PathBuf, key_pem_path: PathBuf) -> ServerCert {
    let chain_der = read_certificates(&chain_pem_path);
    let key_der = match PrivateKeyDer::from_pem_file(&key_pem_path).expect("a PEM key") {
        PrivateKeyDer::Pkcs8(key) => key.secret_pkcs8_der().to_vec(),
        other => panic!("openssl wrote a non-PKCS#8 key: {other:?}"),
    };
    ServerCert {
        chain_pem_path,
        key_pem_path,
        chain_der,
        key_der,
    }
}

/// Every certificate in a PEM file, as DER, in order.
pub fn read_certificates(path: &Path) -> Vec<Vec<u8>> {
    let certificates: Vec<Vec<u8>> = CertificateDer::pem_file_iter(path)
        .expect("open a PEM file")
        .map(|certificate| certificate.expect("a PEM certificate").to_vec())
        .collect();
    assert!(
        !certificates.is_empty(),
        "no certificate in {}",
        path.display()
    );
    certificates
}

/// A positive 63-bit serial that is never zero.
fn random_serial() -> u64 {
    let bytes = hex::decode(random_hex(8)).expect("random_hex gives hex");
    let value = u64::from_be_bytes(bytes.try_into().expect("eight bytes"));
    (value >> 1).max(1)
}

/// An `openssl` command reading `config`: `req` and `ca` take their default configuration
/// from `OPENSSL_CONF`, and `pkcs12` has no `-config` option at all.
fn openssl(config: &Path, san: &str) -> Command {
    let mut command = Command::new("openssl");
    command.env("OPENSSL_CONF", config).env("PKI_SAN", san);
    command
}

/// Runs `command`, failing the test with OpenSSL's own words when it fails.
fn run(command: &mut Command) {
    let output = command.output().expect("run openssl");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
