//! The processes of a fault run: three `withholding serve` replicas of the real binary on one
//! PostgreSQL database, each with a log in the run's folder, and the bank simulator they charge
//! (its library on a thread and runtime of its own: its binary belongs to another crate, which
//! this test cannot find; the bank is never killed).
//! A replica is killed with SIGKILL and started again on the same port; `serve` starts no
//! children, so killing its process kills its whole tree.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use withholding::pb::bank as bank_pb;

use super::{Rng, random_seed};
use crate::harness::BIN;

/// How long a process may take to say where it listens, and then to answer its health check.
const START_WITHIN: Duration = Duration::from_secs(30);
/// How often a replica is started again when its port is briefly held by someone else.
const PORT_ATTEMPTS: u32 = 50;
/// The bank deadline of every replica: short, so a slow or hung bank is an unknown outcome soon.
pub const BANK_DEADLINE_MS: u64 = 300;
/// The replicas' own upper bound on a request.
const REQUEST_TIMEOUT_S: u64 = 10;
pub const REPLICAS: usize = 3;

/// A child process whose stderr goes, line by line, to a log file and to the test until the
/// process is up.
struct Process {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, log: &Path) -> Self {
        // Every flag of the binary has a WITHHOLDING_* variable: one set in the caller's
        // environment would change the server under test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WITHHOLDING_") {
                command.env_remove(key);
            }
        }
        command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn the withholding binary");
        let pipe = child.stderr.take().expect("stderr is piped");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the process log");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                // Fails once the test stopped listening; the log keeps everything.
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            log: log.to_owned(),
        }
    }

    /// The rest of the first stderr line that starts with `prefix`; an error if the process
    /// exits or stays silent first.
    async fn wait_for(&mut self, prefix: &str) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + START_WITHIN;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        // Nobody reads further lines: stop queueing them (the log has them).
                        self.lines.close();
                        return Ok(rest.trim().to_owned());
                    }
                }
                Ok(None) => {
                    let _ = self.child.wait();
                    return Err(format!(
                        "exited before printing {prefix:?}; log {}",
                        self.log.display()
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "did not print {prefix:?} within {START_WITHIN:?}; log {}",
                        self.log.display()
                    ));
                }
            }
        }
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_line(log: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the process log");
    writeln!(file, "---- {text} ----").expect("write the process log");
}

/// A port the kernel never picks as the local end of an outgoing connection (below its
/// ephemeral range), free now: while a replica is down, no connection can take its port.
fn replica_port(rng: &mut Rng, taken: &[u16]) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(1));
    assert!(
        high > low + 1_000,
        "the ephemeral port range starts at {ephemeral_low}: no room below it for the replicas"
    );
    for _ in 0..1_000 {
        let port = low + u16::try_from(rng.below(u64::from(high - low))).expect("below u16");
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {high}");
}

/// What every replica is started with.
struct ServeConfig {
    database_url: String,
    data_dir: PathBuf,
    key_file: PathBuf,
    bank_url: String,
}

/// One `withholding serve` on a fixed port, down or up.
pub struct Replica {
    pub port: u16,
    log: PathBuf,
    process: Option<Process>,
    /// How often it was started (the first start included).
    pub starts: u32,
}

impl Replica {
    fn command(&self, config: &ServeConfig) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--database-url", &config.database_url])
            .arg("--data-dir")
            .arg(&config.data_dir)
            .arg("--jwt-hs256-key-file")
            .arg(&config.key_file)
            .args(["--bank-gateway-url", &config.bank_url])
            .args(["--bank-deadline-ms", &BANK_DEADLINE_MS.to_string()])
            .args(["--resolver-interval-s", "1"])
            .args(["--request-timeout-s", &REQUEST_TIMEOUT_S.to_string()]);
        command
    }

    /// Starts it and returns once its health service says SERVING.
    async fn start(&mut self, config: &ServeConfig) {
        assert!(self.process.is_none(), "replica on {} is up", self.port);
        self.starts += 1;
        let mut last = String::new();
        for attempt in 1..=PORT_ATTEMPTS {
            log_line(&self.log, &format!("start {} (try {attempt})", self.starts));
            let mut process = Process::spawn(self.command(config), &self.log);
            match process.wait_for("withholding listening on ").await {
                Ok(addr) => {
                    assert_eq!(addr, format!("127.0.0.1:{}", self.port));
                    self.process = Some(process);
                    wait_serving(self.port).await;
                    return;
                }
                Err(e) => {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    let this_start = log.rsplit("---- start").next().unwrap_or_default();
                    // Someone held the port for a moment (a probe of another test): try again.
                    if !this_start.contains("Address already in use") {
                        panic!("replica on port {}: {e}", self.port);
                    }
                    last = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!(
            "replica on port {} could not bind in {PORT_ATTEMPTS} tries: {last}",
            self.port
        );
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
            log_line(&self.log, "killed with SIGKILL");
        }
    }
}

/// Polls the health service every 20 ms until it answers SERVING.
async fn wait_serving(port: u16) {
    let started = tokio::time::Instant::now();
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1));
    loop {
        if let Ok(channel) = endpoint.connect().await {
            let answer = HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "withholding.v1.MandateService".into(),
                })
                .await;
            if answer.is_ok_and(|a| a.into_inner().status == ServingStatus::Serving as i32) {
                return;
            }
        }
        assert!(
            started.elapsed() < START_WITHIN,
            "replica on port {port} listens but is not SERVING after {START_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bank simulator and the three replicas.
pub struct Cluster {
    config: ServeConfig,
    _bank: withholding_bank_sim::BankSimThread,
    bank_url: String,
    pub replicas: Vec<Replica>,
}

impl Cluster {
    /// Starts the bank simulator and three replicas on `database_url`, with the HS256 `secret`;
    /// logs and keys go to `dir`.
    pub async fn start(database_url: &str, dir: &Path, secret: &[u8]) -> Self {
        let key_file = dir.join("jwt-hs256.key");
        std::fs::write(&key_file, hex::encode(secret)).expect("write the key file");
        let bank = withholding_bank_sim::BankSimThread::start("127.0.0.1:0".parse().unwrap())
            .unwrap_or_else(|e| panic!("bank-sim: {e}"));
        let bank_url = format!("http://{}", bank.local_addr());
        let config = ServeConfig {
            database_url: database_url.to_owned(),
            data_dir: dir.join("data"),
            key_file,
            bank_url: bank_url.clone(),
        };
        // Not from the run's seed: how many candidates are busy varies, and would shift every
        // choice a replay makes after this one.
        let mut rng = Rng::new(random_seed());
        let mut ports = vec![];
        for _ in 0..REPLICAS {
            let port = replica_port(&mut rng, &ports);
            ports.push(port);
        }
        let mut replicas: Vec<Replica> = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| Replica {
                port,
                log: dir.join(format!("replica-{i}.log")),
                process: None,
                starts: 0,
            })
            .collect();
        // One after the other: the first applies the migrations.
        for replica in &mut replicas {
            replica.start(&config).await;
        }
        Self {
            config,
            _bank: bank,
            bank_url,
            replicas,
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.replicas.iter().map(|r| r.port).collect()
    }

    pub fn bank_url(&self) -> &str {
        &self.bank_url
    }

    pub fn kill(&mut self, replica: usize) {
        self.replicas[replica].kill();
    }

    pub async fn restart(&mut self, replica: usize) {
        self.replicas[replica].start(&self.config).await;
    }

    /// Kills every replica: what is checked afterwards is what the database kept.
    pub fn kill_all(&mut self) {
        for replica in &mut self.replicas {
            replica.kill();
        }
    }

    /// Every charge the bank recorded (the bank is never killed).
    pub async fn bank_charges(&self) -> Vec<bank_pb::SimulatedCharge> {
        bank_control(&self.bank_url)
            .list_charges(bank_pb::ListChargesRequest {})
            .await
            .expect("list the bank's charges")
            .into_inner()
            .charges
    }
}

pub type BankControl = bank_pb::bank_simulator_service_client::BankSimulatorServiceClient<Channel>;

pub fn bank_control(url: &str) -> BankControl {
    BankControl::new(
        Endpoint::from_shared(url.to_owned())
            .expect("bank url")
            .connect_lazy(),
    )
}
