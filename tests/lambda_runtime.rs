//! The real function binaries under the real Lambda Runtime API: `cargo
//! lambda watch` runs them, `cargo lambda invoke` sends each its sample
//! event from `events/`, and the API Gateway response is checked.

use ledgerline_tests::{sample_event, TestServer, EVENT_EXPECTATIONS};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Stops the whole process group (cargo lambda and the function processes
/// it started) when the test ends, pass or fail.
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        // cargo lambda waits for its function instances on SIGTERM; give it
        // a moment, then make sure nothing of the group is left behind.
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn function_binaries_answer_their_events_under_cargo_lambda() {
    let have = Command::new("cargo").args(["lambda", "--version"]).output();
    assert!(
        have.is_ok_and(|o| o.status.success()),
        "cargo-lambda is not installed: run the tests with `scripts/test.sh`, which installs it"
    );
    let s = TestServer::start().await;
    let port = free_port().to_string();
    let data_dir = std::env::temp_dir().join(format!("ll-watch-{port}"));
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("ll-watch-{port}.log"))).unwrap();
    let child = Command::new("cargo")
        .current_dir(repo())
        .args([
            "lambda",
            "watch",
            "-p",
            "ledgerline-functions",
            "--ignore-changes",
            "-A",
            "127.0.0.1",
            "-P",
            &port,
        ])
        .arg("--env-var")
        .arg(format!("DATABASE_URL={}", s.db.url))
        .arg("--env-var")
        .arg(format!("LEDGERLINE_DATA_DIR={}", data_dir.display()))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()
        .expect("start cargo lambda watch");
    let _watch = Watch(child);

    let deadline = Instant::now() + Duration::from_secs(180);
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(
            Instant::now() < deadline,
            "cargo lambda watch did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let events_dir = std::env::temp_dir().join(format!("ll-events-{port}"));
    std::fs::create_dir_all(&events_dir).unwrap();
    for (function, status) in EVENT_EXPECTATIONS {
        let file = events_dir.join(format!("{function}.json"));
        std::fs::write(&file, sample_event(function, &s.seed)).unwrap();
        let out = Command::new("cargo")
            .current_dir(repo())
            .args([
                "lambda",
                "invoke",
                function,
                "-A",
                "127.0.0.1",
                "-P",
                &port,
                "-o",
                "json",
                "--data-file",
            ])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{function}: invoke failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let resp: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{function}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(resp["statusCode"], *status, "{function}: {resp}");
        assert_eq!(
            resp["headers"]["content-type"], "application/json",
            "{function}"
        );
        assert!(resp["headers"]["x-request-id"].is_string(), "{function}");
        let body: Value = serde_json::from_str(resp["body"].as_str().unwrap()).unwrap();
        match *function {
            "api_health" => assert_eq!(body["database"], "ok"),
            "api_me" => assert_eq!(body["org"]["id"], s.seed.org_id.as_str()),
            "api_admin_create_org" => assert_eq!(body["name"], "Acme"),
            "api_admin_create_api_key" => {
                assert!(body["key"].as_str().unwrap().starts_with("ll_org_"))
            }
            "api_admin_revoke_api_key" => assert!(body["revoked_at"].is_string()),
            "api_fallback" => ledgerline_tests::assert_contract(&body, "route_not_found"),
            _ => {}
        }
    }
    // The writes really reached the database through the function binaries.
    assert_eq!(s.count("organizations").await, 2);
    assert_eq!(s.count("users").await, 1);
}
