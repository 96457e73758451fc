//! The `ledgerline` command as a user runs it: the real binary.

use ledgerline_tests::test_db;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The binary built by `cargo build --workspace` (scripts/test.sh does that
/// before running the tests).
fn ledgerline() -> Command {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/ledgerline");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --workspace` (scripts/test.sh does)",
        bin.display()
    );
    let mut c = Command::new(bin);
    c.env_remove("DATABASE_URL").env("RUST_LOG", "warn");
    c
}

#[test]
fn an_unreachable_database_is_a_clear_error_not_a_panic() {
    for args in [&["migrate"][..], &["bootstrap", "--json"][..]] {
        let out = ledgerline()
            .args(args)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error: connecting to the database"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = ledgerline().arg("migrate").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL is not set"));
}

#[tokio::test]
async fn migrate_then_bootstrap_prints_working_keys() {
    let db = test_db().await;
    let out = ledgerline()
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "database is up to date"
    );

    let out = ledgerline()
        .args(["bootstrap", "--json", "--org-name", "Acme Audit"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert!(v["org_api_key"].as_str().unwrap().starts_with("ll_org_"));
    assert!(v["operator_api_key"]
        .as_str()
        .unwrap()
        .starts_with("ll_op_"));
    let client = db.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT o.name, count(k.*) FROM organizations o JOIN api_keys k ON k.org_id = o.id
              WHERE o.id = $1::text::uuid GROUP BY o.name",
            &[&v["org_id"].as_str().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Acme Audit");
    assert_eq!(row.get::<_, i64>(1), 1);
}
