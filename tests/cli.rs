//! The command line as scripts use it: `check` and the lifecycle of `run`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mtls-gateway"))
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, body).expect("config written");
    path
}

#[test]
fn check_accepts_the_example_configuration() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml");

    let output = gateway()
        .arg("check")
        .arg("--config")
        .arg(&example)
        .output()
        .expect("runs");

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_lists_every_problem_with_its_path_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "store:\n  kind: vault\n  address: not a url\n  mount: secret\n  prefix: p\n  \
         auth:\n    method: token\n    token_env: VAULT_TOKEN\n\
         log:\n  level: info\n  colour: red\nrefresh:\n  poll_seconds: 0\nlisteners: {}\n",
    );

    let output = gateway()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("runs");

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for path in [
        "listeners:",
        "store.address:",
        "log.colour:",
        "refresh.poll_seconds:",
    ] {
        assert!(stderr.contains(path), "missing {path} in:\n{stderr}");
    }
}

#[test]
fn check_reports_a_yaml_syntax_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "store: [unclosed\n");

    let output = gateway()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("runs");

    assert_eq!(output.status.code(), Some(2));
    assert!(!output.stderr.is_empty());
}

/// Reads stderr on a thread, so the test can wait for a line with a deadline.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!(
        "no line containing {needle:?} within {limit:?}; saw:\n{}",
        seen.join("\n")
    );
}

#[test]
fn run_loads_the_store_and_stops_on_sigterm_within_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let runtime = dir.path().join("run");
    let config = write_config(
        dir.path(),
        &format!(
            "store:\n  kind: local\n  path: {}\nlifecycle:\n  grace_period_seconds: 1\n  \
             shutdown_timeout_seconds: 1\n  runtime_dir: {}\nproxy:\n  listen: 127.0.0.1:{}\n\
             admin:\n  listen: 127.0.0.1:0\n",
            store.display(),
            runtime.display(),
            free_port()
        ),
    );
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    let mut child = gateway()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the gateway starts");
    let lines = lines_of(&mut child);

    wait_for_line(&lines, "snapshot loaded", Duration::from_secs(30));
    let started = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());

    let status = loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("the gateway did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn run_refuses_an_invalid_configuration_with_status_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "store:\n  kind: nowhere\n");

    let output = gateway()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("runs");

    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("store"));
}

#[test]
fn check_answers_every_mangled_example_with_a_verdict_not_a_crash() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml"))
            .expect("the example configuration");
    let lines: Vec<&str> = example.lines().collect();

    for skip in 0..lines.len() {
        let mangled: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, line)| format!("{line}\n"))
            .collect();

        let parsed = mtls_gateway::config::Config::parse(&mangled);

        if let Err(problems) = parsed {
            assert!(
                !problems.0.is_empty(),
                "line {skip} removed: an error without problems"
            );
            assert!(problems
                .0
                .iter()
                .all(|p| !p.path.is_empty() && !p.message.is_empty()));
        }
    }
}
