//! The README's walkthrough, run as written: every command of its second-terminal blocks, in
//! order, against the real binary (SQLite, the embedded default) and the real bank simulator,
//! through `buf curl` as a reader would paste them. A command followed by a `# → …` line must
//! answer with what that line says first (a word, or the text in backticks), and fail when that
//! is a gRPC code in lower case (`failed_precondition`); any other command must succeed. Only
//! three things are changed: the binary instead of `cargo run`, and the two ports.
//!
//! Needs Node.js and npm (`npx` fetches buf from the npm registry on its first run).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::BIN;

/// Everything the walkthrough's calls may take, the resolver's wait included.
const WALKTHROUGH_TIMEOUT: Duration = Duration::from_secs(600);

/// One command of the walkthrough and what its `# →` line expects, if it has one.
#[derive(Debug)]
struct Step {
    command: String,
    expect: Option<Expect>,
}

#[derive(Debug)]
struct Expect {
    /// Text that must appear in the answer.
    text: String,
    /// Whether the call must fail (the text is a gRPC code in lower case).
    error: bool,
}

/// The blocks between `## A walkthrough` and the next `## ` heading that the reader pastes
/// into the second terminal (a block that starts `# in the first terminal` is the test's to
/// do: it starts the processes itself).
fn walkthrough_blocks(readme: &str) -> Vec<String> {
    let start = readme
        .find("\n## A walkthrough")
        .expect("README has a walkthrough");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut blocks = vec![];
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() != "```sh" {
            continue;
        }
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim_end() != "```")
            .collect();
        if block
            .first()
            .is_some_and(|l| l.starts_with("# in the first terminal"))
        {
            continue;
        }
        blocks.push(block.join("\n"));
    }
    blocks
}

/// Whether `text` closes every quote it opens (escaped double quotes do not count).
fn quotes_closed(text: &str) -> bool {
    let unescaped = text.replace("\\\"", "");
    let mut single = false;
    let mut double = false;
    for c in unescaped.chars() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            _ => {}
        }
    }
    !single && !double
}

/// The commands of the blocks, each with the expectation on the line after it.
fn steps(blocks: &[String]) -> Vec<Step> {
    let mut steps: Vec<Step> = vec![];
    for block in blocks {
        let mut command = String::new();
        for line in block.lines() {
            if command.is_empty() {
                if let Some(expect) = line.strip_prefix("# → ") {
                    let step = steps.last_mut().expect("an expectation follows a command");
                    step.expect = Some(parse_expect(expect));
                    continue;
                }
                if line.trim().is_empty() || line.starts_with('#') {
                    continue;
                }
            }
            command.push_str(line);
            command.push('\n');
            if quotes_closed(&command) && !line.ends_with('\\') {
                steps.push(Step {
                    command: std::mem::take(&mut command),
                    expect: None,
                });
            }
        }
        assert!(command.is_empty(), "a command never ends: {command}");
    }
    steps
}

fn parse_expect(line: &str) -> Expect {
    let text = match line.strip_prefix('`') {
        Some(quoted) => quoted.split('`').next().unwrap_or_default().to_owned(),
        None => line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_end_matches([',', ';', ':'])
            .to_owned(),
    };
    let error = !text.is_empty() && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    Expect { text, error }
}

/// The bash script that runs the steps one by one, each into its own output file, and stops at
/// the first that does not answer as expected.
fn script(steps: &[Step]) -> String {
    let mut script = String::from(
        "OUT=$(mktemp)\n\
         check() {\n  \
           cat \"$OUT\"\n  \
           if [ \"$3\" = error ] && [ \"$1\" -eq 0 ]; then echo \"WALKTHROUGH FAILED: step $4 should have failed\"; exit 1; fi\n  \
           if [ \"$3\" = ok ] && [ \"$1\" -ne 0 ]; then echo \"WALKTHROUGH FAILED: step $4 exited $1\"; exit 1; fi\n  \
           if [ -n \"$2\" ] && ! grep -qF -- \"$2\" \"$OUT\"; then echo \"WALKTHROUGH FAILED: step $4 did not answer $2\"; exit 1; fi\n\
         }\n",
    );
    for (n, step) in steps.iter().enumerate() {
        let (text, mode) = match &step.expect {
            Some(e) => (e.text.as_str(), if e.error { "error" } else { "ok" }),
            None => ("", "ok"),
        };
        let first = step.command.lines().next().unwrap_or_default();
        script.push_str(&format!(
            "echo {}\n{{\n{}}} >\"$OUT\" 2>&1 && status=0 || status=$?\ncheck \"$status\" {} {mode} {}\n",
            shell_quote(&format!("### step {}: {first}", n + 1)),
            step.command,
            shell_quote(text),
            n + 1
        ));
    }
    script.push_str("echo WALKTHROUGH PASSED\n");
    script
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A process of the binary, killed when dropped, and the address it printed it listens on.
struct Process {
    child: Child,
    addr: String,
}

impl Process {
    fn start(dir: &Path, args: &[&str], listening: &str) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .env_remove("WITHHOLDING_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut lines = stderr.lines();
        let addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{args:?} stopped before listening"))
                .expect("read stderr");
            if let Some(addr) = line.strip_prefix(listening) {
                break addr.trim().to_owned();
            }
        };
        // Keep draining stderr so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_readme_walkthrough_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let steps = steps(&walkthrough_blocks(&readme));
    assert!(
        steps.len() > 40,
        "the walkthrough has {} steps",
        steps.len()
    );
    let mut script = script(&steps);
    let cargo_run = r#"W="cargo run -q --""#;
    assert!(
        script.contains(cargo_run),
        "the walkthrough no longer says {cargo_run}"
    );
    script = script.replace(cargo_run, &format!("W={BIN:?}"));

    let dir = tempfile::tempdir().expect("temp dir");
    // The simulator's binary belongs to another crate, which this test cannot find: its
    // library serves the same simulator on a thread and runtime of its own.
    let bank = withholding_bank_sim::BankSimThread::start("127.0.0.1:0".parse().unwrap())
        .expect("start the bank simulator");
    let bank_addr = bank.local_addr().to_string();
    let bank_url = format!("http://{bank_addr}");
    let server = Process::start(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--bank-gateway-url",
            &bank_url,
        ],
        "withholding listening on ",
    );
    for (from, to) in [
        ("127.0.0.1:50051", &server.addr),
        ("127.0.0.1:50052", &bank_addr),
    ] {
        assert!(
            script.contains(from),
            "the walkthrough no longer uses {from}"
        );
        script = script.replace(from, to);
    }

    let started = Instant::now();
    let mut run = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash (and npx for buf) are needed to run the walkthrough");
    let output = loop {
        if run.try_wait().expect("wait for bash").is_some() {
            break run.wait_with_output().expect("walkthrough output");
        }
        if started.elapsed() > WALKTHROUGH_TIMEOUT {
            let _ = run.kill();
            panic!("the walkthrough took longer than {WALKTHROUGH_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("WALKTHROUGH PASSED"),
        "{stdout}\n{stderr}"
    );
    drop(server);
    drop(bank);
}

#[test]
fn steps_follow_quotes_across_lines_and_take_their_expectations() {
    let blocks = vec![
        "X=1\n$CALL -d '{\n  \"a\": \"b\"}' $URL/M\n# → OK_THING, more\nfield() { sed \"s/\\\"$1\\\"//\"; }\necho hi\n# → `\"replayed\": true` so\nfalse\n# → not_found: gone".to_owned(),
    ];
    let steps = steps(&blocks);
    let shapes: Vec<(usize, Option<(&str, bool)>)> = steps
        .iter()
        .map(|s| {
            (
                s.command.lines().count(),
                s.expect.as_ref().map(|e| (e.text.as_str(), e.error)),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [
            (1, None),
            (2, Some(("OK_THING", false))),
            (1, None),
            (1, Some(("\"replayed\": true", false))),
            (1, Some(("not_found", true))),
        ]
    );
}
