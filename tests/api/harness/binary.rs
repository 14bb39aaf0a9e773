//! The real binary, for tests that run it as an operator would.

use std::path::Path;
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_withholding");

/// Mints a token with `withholding token --data-dir DATA ARGS…` (the development key in DATA).
pub fn mint_token(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("token")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
