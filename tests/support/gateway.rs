//! Runs the real `mtls-gateway` binary with a configuration the test writes, and keeps its log.
//!
//! Every log line is kept and echoed to the test's stderr as `[gateway] ...`, which libtest
//! shows only for failing tests (or with `--nocapture`).

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long the gateway may take to load its first snapshot and open its proxy listener.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How long after the proxy listens [`Gateway::sigterm`] waits, so pingora's signal handler
/// is in place.
const SIGTERM_SETTLE: Duration = Duration::from_millis(500);

/// The log filter unless the test sets `RUST_LOG` through [`GatewayBuilder::env`].
const DEFAULT_RUST_LOG: &str = "info";

/// A free loopback port: bound on port 0, then released. Another process may take it before
/// the caller binds it; on loopback in a test run that is rare enough.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Environment for a gateway before it starts.
#[derive(Debug, Default)]
pub struct GatewayBuilder {
    env: Vec<(String, String)>,
}

impl GatewayBuilder {
    /// Sets an environment variable for the gateway process (`RUST_LOG`, a Vault token...).
    pub fn env(mut self, name: &str, value: &str) -> GatewayBuilder {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Writes the configuration `config(proxy_addr, runtime_dir)` returns to
    /// `runtime_dir/gateway.yaml`, runs `mtls-gateway run --config` on it, and returns once
    /// `proxy_addr` accepts connections. Panics with the log if the gateway exits first or
    /// does not listen within 60 s.
    pub fn start(self, config: impl FnOnce(SocketAddr, &Path) -> String) -> Gateway {
        let runtime_dir = tempfile::tempdir().expect("a runtime dir for the gateway");
        let proxy_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config_path = runtime_dir.path().join("gateway.yaml");
        std::fs::write(&config_path, config(proxy_addr, runtime_dir.path()))
            .expect("write gateway.yaml");

        let mut command = Command::new(env!("CARGO_BIN_EXE_mtls-gateway"));
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env_remove("MTLS_GATEWAY_LOG_FORMAT")
            .env("RUST_LOG", DEFAULT_RUST_LOG)
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn mtls-gateway");
        let log = Arc::new(Log::default());
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        keep_lines(stdout, Arc::clone(&log));
        keep_lines(stderr, Arc::clone(&log));

        let mut gateway = Gateway {
            child,
            proxy_addr,
            config_path,
            runtime_dir,
            log,
            listening_since: Instant::now(),
        };
        gateway.wait_for_listener();
        gateway
    }
}

/// A running gateway process. Killed on drop if still running.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    proxy_addr: SocketAddr,
    config_path: PathBuf,
    runtime_dir: tempfile::TempDir,
    log: Arc<Log>,
    /// When the proxy port first accepted a connection.
    listening_since: Instant,
}

/// Every line the gateway wrote, stdout and stderr interleaved as they arrived.
#[derive(Debug, Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// [`GatewayBuilder::start`] with no extra environment.
    pub fn start(config: impl FnOnce(SocketAddr, &Path) -> String) -> Gateway {
        Gateway::builder().start(config)
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file; rewrite it to exercise hot reload.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temporary directory holding the configuration, removed on drop; a place for
    /// a local store or CA files the configuration names.
    pub fn runtime_dir(&self) -> &Path {
        self.runtime_dir.path()
    }

    pub fn logs(&self) -> Vec<String> {
        self.log.lines.lock().expect("log lock").clone()
    }

    /// The number of lines logged so far, to wait for a line logged after this point with
    /// [`Gateway::wait_for_log_since`].
    pub fn log_mark(&self) -> usize {
        self.log.lines.lock().expect("log lock").len()
    }

    /// The first line containing `needle`, waiting up to `timeout` for it. Panics with the
    /// whole log on timeout. Blocks the calling thread.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_since(0, needle, timeout)
    }

    /// The first line from index `mark` on that contains `needle`.
    pub fn wait_for_log_since(&self, mark: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().expect("log lock");
        loop {
            if let Some(line) = lines.iter().skip(mark).find(|line| line.contains(needle)) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "no log line containing {needle:?} within {timeout:?}:\n{}",
                    lines.join("\n")
                );
            }
            lines = self
                .log
                .grew
                .wait_timeout(lines, deadline - now)
                .expect("log lock")
                .0;
        }
    }

    /// Asks the gateway to drain and stop.
    ///
    /// Pingora installs its SIGTERM handler only after its services, listeners included, have
    /// started; a SIGTERM in that window kills the process outright, without a drain. So this
    /// waits until the proxy has been listening for [`SIGTERM_SETTLE`] before signalling.
    pub fn sigterm(&self) {
        let settled = self.listening_since + SIGTERM_SETTLE;
        std::thread::sleep(settled.saturating_duration_since(Instant::now()));
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// The exit status, if the process ends within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the gateway") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// The most resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {path}"))
    }

    fn wait_for_listener(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if TcpStream::connect_timeout(&self.proxy_addr, Duration::from_millis(200)).is_ok() {
                self.listening_since = Instant::now();
                return;
            }
            if let Some(status) = self.child.try_wait().expect("poll the gateway") {
                // Let the reader threads catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "the gateway exited with {status} before listening:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "the gateway did not listen on {} within {START_DEADLINE:?}:\n{}",
                    self.proxy_addr,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        self.logs().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies each line of `output` into `log` and to stderr, on a thread, until end of file.
fn keep_lines(output: impl Read + Send + 'static, log: Arc<Log>) {
    std::thread::spawn(move || {
        // Bytes, not `lines()`: a line that is not UTF-8 must not stop the draining, or the
        // gateway would block on a full pipe.
        let mut output = BufReader::new(output);
        let mut raw = Vec::new();
        while output.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
            let line = without_ansi(String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']));
            raw.clear();
            eprintln!("[gateway] {line}");
            log.lines.lock().expect("log lock").push(line);
            log.grew.notify_all();
        }
    });
}

/// `text` without ANSI escape sequences (`ESC [ ... final`), so needles like `account=a` match
/// whether or not the gateway coloured its fields.
fn without_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            plain.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            // Parameters and intermediates, up to and including the final byte.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    plain
}
