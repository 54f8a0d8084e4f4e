//! The P12 diagnosis, through the library and through `mtls-gateway p12 inspect`, over the
//! fixture matrix made by real `openssl` and `keytool`.

mod support;

use std::process::{Command, Output};

use mtls_gateway::p12::{diagnose, DiagnosisPolicy, Report, Verdict};
use secrecy::SecretString;
use support::fixtures::{self, Fixture};

fn sorted_codes(codes: Vec<mtls_gateway::p12::Code>) -> Vec<String> {
    let mut codes: Vec<String> = codes.into_iter().map(|c| c.as_str().to_owned()).collect();
    codes.sort();
    codes
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Usable => "usable",
        Verdict::Unusable => "unusable",
    }
}

/// Every way a report differs from the manifest row, as sentences; empty when it matches.
fn differences(
    fixture: &Fixture,
    verdict: &str,
    problems: &[String],
    warnings: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    if verdict != fixture.verdict {
        out.push(format!("verdict {verdict}, expected {}", fixture.verdict));
    }
    if problems != fixture.problems.as_slice() {
        out.push(format!(
            "problems {problems:?}, expected {:?}",
            fixture.problems
        ));
    }
    if warnings != fixture.warnings.as_slice() {
        out.push(format!(
            "warnings {warnings:?}, expected {:?}",
            fixture.warnings
        ));
    }
    out.into_iter()
        .map(|d| format!("{}: {d}", fixture.name()))
        .collect()
}

fn inspect_cli(args: &[&str], env_password: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mtls-gateway"));
    command.arg("p12").arg("inspect").args(args);
    command.env_remove("MTLS_GATEWAY_P12_PASSWORD");
    if let Some(password) = env_password {
        command.env("MTLS_GATEWAY_P12_PASSWORD", password);
    }
    command.output().expect("the binary runs")
}

#[test]
fn library_gives_every_fixture_its_expected_verdict_and_codes() {
    let all = fixtures::all();
    assert!(all.len() >= 40, "the matrix shrank to {} files", all.len());

    let mut mismatches = Vec::new();
    for fixture in &all {
        let report = diagnose(
            fixture.der(),
            fixture.password(),
            &DiagnosisPolicy::default(),
        )
        .report;

        let problems = sorted_codes(report.problem_codes());
        let warnings = sorted_codes(report.warning_codes());
        mismatches.extend(differences(
            fixture,
            verdict_name(report.verdict),
            &problems,
            &warnings,
        ));
    }

    assert!(
        mismatches.is_empty(),
        "mismatches:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn cli_gives_every_fixture_its_expected_verdict_codes_and_exit_status() {
    let mut mismatches = Vec::new();
    for fixture in fixtures::all() {
        let file = fixture.file.to_str().expect("utf-8 path");
        let password_file = fixture.password_file.to_str().expect("utf-8 path");

        let output = inspect_cli(&[file, "--password-file", password_file, "--json"], None);

        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("--json prints one JSON document");
        let codes = |key: &str| -> Vec<String> {
            let mut codes: Vec<String> = report[key]
                .as_array()
                .expect("a list of findings")
                .iter()
                .map(|f| f["code"].as_str().expect("a code").to_owned())
                .collect();
            codes.sort();
            codes
        };
        let verdict = report["verdict"].as_str().expect("a verdict").to_owned();
        mismatches.extend(differences(
            &fixture,
            &verdict,
            &codes("problems"),
            &codes("warnings"),
        ));
        let expected_status = if fixture.verdict == "usable" { 0 } else { 2 };
        if output.status.code() != Some(expected_status) {
            mismatches.push(format!(
                "{}: exit {:?}",
                fixture.name(),
                output.status.code()
            ));
        }
    }

    assert!(
        mismatches.is_empty(),
        "mismatches:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn cli_takes_the_password_from_the_environment() {
    let fixture = fixtures::find("a usable modern openssl file", |f| {
        f.verdict == "usable" && f.producer == "openssl-modern"
    });

    let output = inspect_cli(
        &[fixture.file.to_str().expect("utf-8 path")],
        Some(&fixture.password_text()),
    );

    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.starts_with("verdict: usable\n"), "{text}");
}

#[test]
fn cli_without_a_password_is_a_usage_error() {
    let fixture = fixtures::find("any usable file", |f| f.verdict == "usable");

    let output = inspect_cli(&[fixture.file.to_str().expect("utf-8 path")], None);

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--password-file"), "{stderr}");
}

#[test]
fn cli_refuses_a_password_on_the_command_line() {
    let fixture = fixtures::find("any usable file", |f| f.verdict == "usable");

    let output = inspect_cli(
        &[
            fixture.file.to_str().expect("utf-8 path"),
            "--password",
            "changeit",
        ],
        None,
    );

    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn cli_with_a_missing_file_is_a_usage_error() {
    let output = inspect_cli(&["/nonexistent/client.p12"], Some("x"));

    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn report_names_the_algorithms_each_producer_used() {
    let cases = [
        (
            "openssl-modern",
            "pbes2-aes-256-cbc",
            "pbes2-aes-256-cbc",
            "hmac-sha256",
        ),
        (
            "openssl-legacy",
            "pbe-sha1-rc2-40",
            "pbe-sha1-3des",
            "hmac-sha1",
        ),
        (
            "openssl-3des",
            "pbe-sha1-3des",
            "pbe-sha1-3des",
            "hmac-sha1",
        ),
        (
            "keytool-legacy",
            "pbe-sha1-rc2-40",
            "pbe-sha1-3des",
            "hmac-sha1",
        ),
    ];
    for (producer, certs, keys, mac) in cases {
        let fixture = fixtures::find(producer, |f| {
            f.producer == producer && f.verdict == "usable"
        });

        let report = diagnose(
            fixture.der(),
            fixture.password(),
            &DiagnosisPolicy::default(),
        )
        .report;

        let json = serde_json::to_value(&report).expect("serializable");
        let encryption = &json["encryption"];
        assert_eq!(encryption["certificate_bags"], certs, "{producer}");
        assert_eq!(encryption["key_bags"], keys, "{producer}");
        assert_eq!(encryption["mac"], mac, "{producer}");
    }
}

#[test]
fn facts_describe_the_leaf_of_a_chained_file() {
    let fixture = fixtures::find("a chained EC P-384 file", |f| {
        f.verdict == "usable" && f.key == "ec-p384" && f.warnings.is_empty()
    });

    let usable = diagnose(
        fixture.der(),
        fixture.password(),
        &DiagnosisPolicy::default(),
    )
    .into_usable()
    .expect("usable");

    let identity = usable.identity();
    assert_eq!(identity.chain.len(), 3, "leaf, intermediate and root");
    let expected = mtls_gateway::ids::Fingerprint::of_der(&identity.chain[0]);
    assert_eq!(usable.facts().fingerprint, expected);
    assert!(
        usable.facts().issuer.contains("Intermediate"),
        "{}",
        usable.facts().issuer
    );
}

#[test]
fn expiry_window_is_a_policy_setting() {
    let fixture = fixtures::find("the expires-soon file", |f| {
        f.warnings.iter().any(|w| w == "expires_soon")
    });
    let narrow = DiagnosisPolicy {
        expires_soon: time::Duration::days(1),
        ..Default::default()
    };

    let report = diagnose(fixture.der(), fixture.password(), &narrow).report;

    assert!(!sorted_codes(report.warning_codes()).contains(&"expires_soon".to_owned()));
    assert_eq!(report.verdict, Verdict::Usable);
}

#[test]
fn a_file_is_judged_against_the_policy_clock() {
    let fixture = fixtures::find("a usable file", |f| {
        f.verdict == "usable" && f.warnings.is_empty()
    });
    let in_ten_years = DiagnosisPolicy {
        now: time::OffsetDateTime::now_utc() + time::Duration::days(3650),
        ..Default::default()
    };

    let report = diagnose(fixture.der(), fixture.password(), &in_ten_years).report;

    assert_eq!(sorted_codes(report.problem_codes()), ["expired"]);
    assert!(
        report.problems[0].message.contains("expired on"),
        "{:?}",
        report.problems
    );
}

#[test]
fn wrong_password_is_told_apart_from_damage() {
    let fixture = fixtures::find("a usable modern file", |f| {
        f.verdict == "usable" && f.producer == "openssl-modern"
    });
    let mut truncated = fixture.der();
    truncated.truncate(truncated.len() / 2);

    let wrong = diagnose(
        fixture.der(),
        SecretString::from("not-it"),
        &Default::default(),
    )
    .report;
    let damaged = diagnose(truncated, fixture.password(), &Default::default()).report;

    assert_eq!(sorted_codes(wrong.problem_codes()), ["wrong_password"]);
    assert_eq!(sorted_codes(damaged.problem_codes()), ["not_pkcs12"]);
    assert!(
        wrong.encryption.is_some(),
        "algorithms are readable without the password"
    );
}

fn assert_no_secret(report: &Report, what: &str, secret: &str) {
    let json = serde_json::to_string(report).expect("serializable");
    let text = report.to_string();
    let debug = format!("{report:?}");
    for rendered in [json, text, debug] {
        assert!(
            !rendered.contains(secret),
            "{what} leaks the password: {rendered}"
        );
    }
}

#[test]
fn reports_and_debug_output_never_contain_the_password() {
    for fixture in fixtures::all() {
        let password = fixture.password_text();
        if password.len() < 4 {
            continue;
        }

        let diagnosis = diagnose(
            fixture.der(),
            fixture.password(),
            &DiagnosisPolicy::default(),
        );

        assert_no_secret(&diagnosis.report, &fixture.name(), &password);
        let debug = format!("{diagnosis:?}");
        assert!(
            !debug.contains(&password),
            "Debug of the diagnosis leaks {}",
            fixture.name()
        );
        if let Ok(usable) = diagnosis.into_usable() {
            assert!(!format!("{usable:?}").contains(&password));
            assert!(!format!("{:?}", usable.identity()).contains("PRIVATE"));
        }
    }
}

/// A deterministic stream of positions, so a failure names a mutation that can be replayed.
fn positions(len: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) as usize % len.max(1)
        })
        .collect()
}

#[test]
fn damaged_files_get_a_verdict_with_reasons_and_never_a_panic() {
    let samples: Vec<Fixture> = fixtures::all()
        .into_iter()
        .filter(|f| f.verdict == "usable" && f.key == "ec-p256" && f.problems.is_empty())
        .take(4)
        .collect();
    assert!(!samples.is_empty());

    for (n, fixture) in samples.iter().enumerate() {
        let original = fixture.der();
        for (i, at) in positions(original.len(), 40, n as u64 + 1)
            .into_iter()
            .enumerate()
        {
            let mut flipped = original.clone();
            flipped[at] ^= 0x5a;
            let mut cut = original.clone();
            cut.truncate(at);

            for (what, bytes) in [("flipped", flipped), ("truncated", cut)] {
                let report =
                    diagnose(bytes, fixture.password(), &DiagnosisPolicy::default()).report;

                let explained = report.problems.iter().all(|p| !p.message.is_empty());
                let consistent = (report.verdict == Verdict::Usable) == report.problems.is_empty();
                let context = format!("{} {what} at {at} (mutation {i})", fixture.name());
                assert!(explained && consistent, "{context}: {report:?}");
            }
        }
    }
}
