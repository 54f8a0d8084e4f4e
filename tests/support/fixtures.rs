//! The P12 fixture matrix, made by `tests/fixtures/make-p12-fixtures.sh` with the real `openssl`
//! and `keytool`, once per script version and day (some fixtures expire within days).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// One row of `manifest.tsv`: a file and what its diagnosis must say.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub file: PathBuf,
    pub password_file: PathBuf,
    pub verdict: String,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub producer: String,
    pub key: String,
    pub note: String,
}

impl Fixture {
    pub fn name(&self) -> String {
        self.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn der(&self) -> Vec<u8> {
        std::fs::read(&self.file).expect("fixture file is readable")
    }

    pub fn password(&self) -> SecretString {
        SecretString::from(self.password_text())
    }

    pub fn password_text(&self) -> String {
        std::fs::read_to_string(&self.password_file).expect("password file is readable")
    }
}

/// The directory holding the fixtures, made on first use.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(make)
}

/// Every row of the manifest.
pub fn all() -> Vec<Fixture> {
    let dir = dir();
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).expect("manifest exists");
    let codes = |field: &str| -> Vec<String> {
        if field == "-" {
            return Vec::new();
        }
        field.split(',').map(str::to_owned).collect()
    };
    manifest
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert!(f.len() >= 7, "manifest row has too few columns: {line}");
            Fixture {
                file: dir.join(f[0]),
                password_file: dir.join(f[1]),
                verdict: f[2].to_owned(),
                problems: codes(f[3]),
                warnings: codes(f[4]),
                producer: f[5].to_owned(),
                key: f[6].to_owned(),
                note: f.get(7).copied().unwrap_or("").to_owned(),
            }
        })
        .collect()
}

/// The first fixture that `pick` accepts; panics naming `what` when there is none.
pub fn find(what: &str, pick: impl Fn(&Fixture) -> bool) -> Fixture {
    all()
        .into_iter()
        .find(|f| pick(f))
        .unwrap_or_else(|| panic!("no fixture is {what}"))
}

fn make() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/fixtures/make-p12-fixtures.sh");
    let mut stamp = Sha256::new();
    stamp.update(std::fs::read(&script).expect("fixture script exists"));
    stamp.update(time::OffsetDateTime::now_utc().date().to_string());
    let stamp = hex::encode(stamp.finalize());

    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("p12-fixtures");
    let dir = base.join(&stamp[..16]);
    if dir.join("manifest.tsv").exists() {
        return dir;
    }

    // Made aside and renamed into place, so a run that dies half-way leaves nothing usable-looking.
    let scratch = base.join(format!("{}.tmp-{}", &stamp[..16], std::process::id()));
    let status = Command::new("bash")
        .arg(&script)
        .arg(&scratch)
        .status()
        .expect("bash runs the fixture script");
    assert!(status.success(), "the fixture script failed: {status}");
    if std::fs::rename(&scratch, &dir).is_err() {
        // Another test binary finished first; its copy is as good as ours.
        let _ = std::fs::remove_dir_all(&scratch);
    }
    dir
}
