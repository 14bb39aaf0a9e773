//! The binary as an operator runs it: `serve` creates the dev key on first run and prints how to
//! mint tokens, `token` mints one that `serve` accepts, SIGTERM drains and exits cleanly, and
//! `migrate` works on its own.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use withholding::pb;
use withholding::pb::mandate_service_client::MandateServiceClient;

use crate::harness::{BIN, Bearer, create_request, mint_token};

// Multi-threaded: the blocking wait for the child below must not starve the client's
// connection task, which has to answer the server's GOAWAY for the drain to finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_mint_call_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url"])
        .arg(format!("sqlite://{}/withholding.db", data.display()))
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read stderr until the server says where it listens; the key notice comes first.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut banner = String::new();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(addr) = line.strip_prefix("withholding listening on ") {
            break addr.to_owned();
        }
    };
    assert!(
        banner.contains("created a development signing key"),
        "{banner}"
    );
    assert!(
        banner.contains("withholding token --role merchant"),
        "{banner}"
    );
    assert!(data.join("dev-jwt.key").exists());

    let merchant = mint_token(&data, &["--role", "merchant", "--merchant-id", "m-1"]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        MandateServiceClient::with_interceptor(channel.clone(), Bearer(Some(merchant)));
    let created = client
        .create_mandate(create_request("c-cli", "p-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        created.mandate.unwrap().status,
        pb::MandateStatus::PendingConsent as i32
    );

    // A token signed with another key is refused.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("dev-jwt.key"), "00".repeat(32)).unwrap();
    let forged = mint_token(
        other.path(),
        &["--role", "merchant", "--merchant-id", "m-1"],
    );
    let mut forged_client = MandateServiceClient::with_interceptor(channel, Bearer(Some(forged)));
    let err = forged_client
        .list_mandates(pb::ListMandatesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // SIGTERM: the server drains and exits 0.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopping = std::time::Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    // Well inside the 10 s drain grace: idle connections close promptly on GOAWAY.
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );

    // Restarting on the same data keeps the key (no new banner) and the mandate.
    let out = Command::new(BIN)
        .args(["migrate", "--database-url"])
        .arg(format!("sqlite://{}/withholding.db", data.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn token_needs_the_key_and_a_payer_sub() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["token", "--role", "merchant", "--merchant-id", "m"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `withholding serve` once"));
    std::fs::write(dir.path().join("dev-jwt.key"), "11".repeat(32)).unwrap();
    let out = Command::new(BIN)
        .args(["token", "--role", "payer"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sub is required"));
}

/// `serve` on a fresh SQLite database and data folder with `args` (which may name their own
/// `--listen` or `--database-url`).
fn serve_command(dir: &std::path::Path, args: &[&str]) -> Command {
    let data = dir.join("data");
    let mut command = Command::new(BIN);
    command.arg("serve").arg("--data-dir").arg(&data);
    if !args.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    if !args.contains(&"--database-url") {
        command
            .arg("--database-url")
            .arg(format!("sqlite://{}/withholding.db", data.display()));
    }
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped());
    command
}

/// Runs `serve` expecting it to refuse to start; returns what it printed. Fails if it starts
/// listening instead (and stops it).
fn serve_refuses(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_command(dir.path(), args).spawn().unwrap();
    let mut printed = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("withholding listening on") {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("serve {args:?} started:\n{printed}{line}");
        }
        printed.push_str(&line);
        printed.push('\n');
    }
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "serve {args:?}: {status}\n{printed}"
    );
    printed
}

/// Starts `serve` in `dir`, and stops it once it listens; returns what it printed before.
fn serve_starts(dir: &std::path::Path, args: &[&str]) -> String {
    let mut child = serve_command(dir, args).spawn().unwrap();
    let mut printed = String::new();
    let mut listening = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("withholding listening on") {
            listening = true;
            break;
        }
        printed.push_str(&line);
        printed.push('\n');
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(listening, "serve exited before listening:\n{printed}");
    printed
}

/// A bank gateway URL the client cannot use would make every card debit PENDING_CONFIRMATION
/// for a day: `serve` refuses to start and says why.
#[test]
fn serve_refuses_a_bank_gateway_url_it_cannot_use() {
    for (url, why) in [
        ("127.0.0.1:50052", "has no scheme"),
        ("localhost:50052", "has no scheme"),
        ("ftp://127.0.0.1:50052", "has the scheme \"ftp\", not http"),
        (
            "https://127.0.0.1:50052",
            "uses https, which this build cannot speak",
        ),
        ("http://127.0.0.1", "has no port"),
        ("http://:50052", "has no host"),
        ("http://127.0.0.1:50052/bank", "has a path or query"),
        ("http://user:pw@127.0.0.1:50052", "has user info"),
    ] {
        let printed = serve_refuses(&["--bank-gateway-url", url]);
        assert!(
            printed.contains(&format!("bank gateway URL {url:?} {why}")),
            "{url}: {printed}"
        );
        assert!(printed.contains("expected http://HOST:PORT"), "{printed}");
    }
}

/// An unreachable PostgreSQL is named with the reason, never with its password (sqlx alone
/// said "pool timed out while waiting for an open connection" after 5 s).
#[test]
fn serve_names_an_unreachable_database() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://withholding:s3cret-pw@127.0.0.1:{port}/ledger");
    let started = std::time::Instant::now();
    let printed = serve_refuses(&["--database-url", &url]);
    assert!(
        printed.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port} (database ledger): \
             Connection refused"
        )),
        "{printed}"
    );
    assert!(!printed.contains("s3cret-pw"), "{printed}");
    assert!(!printed.contains("pool timed out"), "{printed}");
    // Refused at once, not after the pool's acquire timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
}

/// A SQLite file that cannot be opened is named with the reason (SQLite alone said "unable to
/// open database file", and a folder that could not be made "File exists (os error 17)").
#[test]
fn serve_names_a_sqlite_file_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("a-folder");
    std::fs::create_dir(&folder).unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    for (path, why) in [
        (folder.clone(), "unable to open database file".to_owned()),
        (
            file.join("withholding.db"),
            format!("creating its folder {}: ", file.display()),
        ),
    ] {
        let url = format!("sqlite://{}", path.display());
        let printed = serve_refuses(&["--database-url", &url]);
        assert!(
            printed.contains(&format!(
                "cannot open the SQLite database {}: {why}",
                path.display()
            )),
            "{printed}"
        );
    }
}

/// A taken address is named, for the gRPC listener and for the metrics listener.
#[test]
fn serve_names_a_busy_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let printed = serve_refuses(&["--listen", &addr]);
    assert!(
        printed.contains(&format!("cannot bind the gRPC listen address {addr}: ")),
        "{printed}"
    );
    assert!(printed.contains("in use"), "{printed}");
    let printed = serve_refuses(&["--metrics-listen", &addr]);
    assert!(
        printed.contains(&format!("cannot bind the metrics address {addr}: ")),
        "{printed}"
    );
    assert!(printed.contains("in use"), "{printed}");
}

/// Every start on the development key says so, with its path, not only the first; with public
/// keys configured there is no such warning.
#[test]
fn serve_warns_of_the_development_key_on_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("data").join("dev-jwt.key");
    let warning = format!(
        "warning: tokens are checked with the development HS256 key {}; anyone who can read it \
         can mint any token: not for production",
        key.display()
    );
    for start in 0..2 {
        let printed = serve_starts(dir.path(), &[]);
        assert!(printed.contains(&warning), "start {start}: {printed}");
        assert_eq!(
            printed.contains("created a development signing key"),
            start == 0,
            "start {start}: {printed}"
        );
    }

    let other = tempfile::tempdir().unwrap();
    let public = format!(
        "ed-1:EdDSA:{}/tests/fixtures/ed-public.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let printed = serve_starts(other.path(), &["--jwt-public-key", &public]);
    assert!(!printed.contains("development"), "{printed}");
}

/// `token` refuses to mint what `serve` would refuse, and says why.
#[test]
fn token_refuses_what_the_server_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dev-jwt.key"), "11".repeat(32)).unwrap();
    for (args, why) in [
        (
            &["--role", "admin"][..],
            "invalid value 'admin' for '--role <ROLE>'",
        ),
        (
            &["--role", "admin"][..],
            "merchant, payer, auditor, operator",
        ),
        (
            &["--role", "merchant"][..],
            "--merchant-id is required for merchants",
        ),
        (
            &["--role", "merchant", "--merchant-id", "m/1"][..],
            "not minting a token the server would refuse: token claims are not valid: \
             merchant_id is not an identifier",
        ),
        (
            &["--role", "operator", "--sub", "ops 1"][..],
            "sub is not an identifier",
        ),
        (
            &["--role", "auditor", "--ttl-s", "0"][..],
            "invalid value '0' for '--ttl-s <TTL_S>'",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("token")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} minted");
        assert!(out.stdout.is_empty(), "{args:?} printed a token");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    // An institution-wide auditor needs no merchant.
    mint_token(dir.path(), &["--role", "auditor"]);
}
