//! Shared by the crash tests: the binaries they drive.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const BENCH: &str = env!("CARGO_BIN_EXE_ringpost-bench");

/// The server binary beside ours (built by `cargo test --workspace`; built
/// here when this crate's tests run alone).
pub fn ringpost() -> PathBuf {
    let bin = Path::new(BENCH).with_file_name("ringpost");
    if !bin.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "ringpost", "--bin", "ringpost"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    bin
}
