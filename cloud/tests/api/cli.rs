//! The binary: bad configuration exits 78 before listening; migrate, admin create-user,
//! backup and check-config work end to end.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_dmr-cloud");

fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("DMR_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn bad_configuration_exits_78_listing_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cloud.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = 80\n[database]\nurl = \"mysql://x\"\n[nope]\nkey = 1\n",
    )
    .unwrap();
    let out = clean_env(&mut Command::new(BIN))
        .args(["--config", file.to_str().unwrap(), "serve"])
        .env("DMR_RATE_LIMIT_PER_MINUTE", "zero")
        .env("DMR_AUTH_JWT_SECRET", "tooshort-secret-value")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.listen",
        "database.url",
        "nope.key",
        "rate_limit.per_minute",
        "auth.jwt_secret",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    assert!(
        !err.contains("tooshort-secret-value"),
        "secrets never print:\n{err}"
    );
    assert!(!dir.path().join("dmr-cloud.db").exists());
}

/// A WeChat Pay section that cannot work stops `serve` with 78 before anything starts, and
/// neither the API v3 key nor the key file's text reaches the output.
#[test]
fn bad_wechatpay_section_exits_78_without_printing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("apiclient_key.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nnot-really-a-key\n").unwrap();
    let file = dir.path().join("cloud.toml");
    std::fs::write(
        &file,
        format!(
            "[wechatpay]\nmchid = \"1900009191\"\nappid = \"wx1\"\nmerchant_serial_no = \"ABC123\"\n\
             private_key_file = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    let out = clean_env(&mut Command::new(BIN))
        .args(["--config", file.to_str().unwrap(), "serve"])
        .env("DMR_WECHATPAY_API_V3_KEY", "v3-key-s3cr3t-but-too-short")
        .env("DMR_SERVER_PUBLIC_BASE_URL", "https://pay.example.com")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for what in [
        "merchant_private_key_pem",
        "api_v3_key",
        "wechatpay_public_key",
    ] {
        assert!(err.contains(what), "{what} missing from:\n{err}");
    }
    assert!(!err.contains("s3cr3t"), "secrets never print:\n{err}");
    assert!(
        !err.contains("not-really-a-key"),
        "key text never prints:\n{err}"
    );
    assert!(!dir.path().join("dmr-cloud.db").exists());
}

#[test]
fn migrate_create_user_check_config_and_backup_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let run = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write as _;
        let mut child = clean_env(&mut Command::new(BIN))
            .args(args)
            .env("DMR_DATABASE_URL", &url)
            .env("DMR_LOG_FORMAT", "json")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().unwrap()
    };
    let out = run(&["migrate"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &[
            "admin",
            "create-user",
            "--username",
            "ops",
            "--role",
            "platform_admin",
        ],
        Some("a long password\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created user ops (platform_admin"));
    let out = run(
        &[
            "admin",
            "create-user",
            "--username",
            "ops",
            "--role",
            "platform_admin",
        ],
        Some("a long password\n"),
    );
    assert!(!out.status.success(), "duplicate username refused");
    let out = run(
        &[
            "admin",
            "create-user",
            "--username",
            "tech",
            "--role",
            "technician",
        ],
        Some("a long password\n"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("merchant_id"));

    let out = run(&["check-config"], None);
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("configuration OK") && shown.contains("[redacted]"),
        "{shown}"
    );

    let backup = dir.path().join("backup.db");
    let out = run(&["backup", "--to", backup.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The copy is a working database holding the user.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = dmr_cloud::db::Db::connect(&format!("sqlite://{}", backup.display()), 1)
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE username = 'ops'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
        db.pool.close().await;
    });
    let out = run(&["backup", "--to", backup.to_str().unwrap()], None);
    assert!(
        !out.status.success(),
        "an existing backup is not overwritten"
    );
}

#[test]
fn backup_of_postgres_points_to_pg_dump() {
    let Some(crate::common::DbKind::Postgres(url)) = crate::common::kinds().into_iter().nth(1)
    else {
        eprintln!("PostgreSQL not configured for this run; SQLite-only run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = clean_env(&mut Command::new(BIN))
        .args(["backup", "--to", dir.path().join("x.db").to_str().unwrap()])
        .env("DMR_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"));
    assert!(!dir.path().join("x.db").exists());
}

/// The real binary: creates its SQLite database on first start, logs JSON, answers
/// `/health`, and on SIGTERM stops cleanly with status 0.
#[test]
fn serve_starts_answers_and_stops_on_sigterm() {
    use std::io::{BufRead as _, Read as _, Write as _};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let db_file = dir.path().join("fresh.db");
    let mut child = clean_env(&mut Command::new(BIN))
        .arg("serve")
        .env("DMR_MASTER_KEY", crate::common::TEST_MASTER_KEY)
        .env(
            "DMR_DATABASE_URL",
            format!("sqlite://{}", db_file.display()),
        )
        .env("DMR_SERVER_LISTEN", "127.0.0.1:0")
        .env("DMR_MQTT_EMBEDDED_LISTEN", "127.0.0.1:0")
        .env("DMR_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    let mut mqtt_addr = None;
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("no 'listening' log line within 60 s; saw {lines:?}")
        });
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("log lines are JSON objects, got {line:?}"));
        lines.push(line.clone());
        if v["message"] == "embedded MQTT broker listening" {
            mqtt_addr = v["addr"].as_str().map(String::from);
        }
        if v["message"] == "listening" {
            break v["addr"].as_str().unwrap().to_string();
        }
    };
    assert!(db_file.exists(), "the database is created on first start");

    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"database\":\"ok\""), "{response}");

    // The same process runs the MQTT broker: an anonymous CONNECT is answered with
    // CONNACK "not authorised" (return code 5).
    let mqtt_addr = mqtt_addr.expect("the embedded broker logs its address before 'listening'");
    let mut mqtt = std::net::TcpStream::connect(&mqtt_addr).unwrap();
    mqtt.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    mqtt.write_all(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b't',
    ])
    .unwrap();
    let mut connack = [0u8; 4];
    mqtt.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 5]);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("\"stopped\"")), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("embedded MQTT broker stopped")),
        "{rest:?}"
    );
}

/// `keys`: new-master prints a usable key; without DMR_MASTER_KEY rotate exits 78 naming
/// how to make one; with it, rotate and list work and list shows both keys.
#[test]
fn keys_commands() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("k.db").display());
    let out = clean_env(&mut Command::new(BIN))
        .args(["keys", "new-master"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let master = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        dmr_cloud::config::parse_master_key(&master).is_ok(),
        "{master}"
    );

    let out = clean_env(&mut Command::new(BIN))
        .args(["keys", "rotate"])
        .env("DMR_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keys.master_key") && err.contains("openssl rand -base64 32"),
        "{err}"
    );
    assert!(
        !dir.path().join("k.db").exists(),
        "nothing opened before the check"
    );

    let run = |args: &[&str], key: &str| {
        clean_env(&mut Command::new(BIN))
            .args(args)
            .env("DMR_DATABASE_URL", &url)
            .env("DMR_MASTER_KEY", key)
            .output()
            .unwrap()
    };
    let out = run(&["keys", "rotate", "--overlap-hours", "1"], &master);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("key 2 is now active"));
    let out = run(&["keys", "list"], &master);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("2\tactive") && listed.contains("1\tretiring"),
        "{listed}"
    );
    // Another master key cannot open them.
    let out = run(
        &["keys", "list"],
        "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DMR_MASTER_KEY"));
}
