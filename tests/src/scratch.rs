//! A temporary directory per test for data directories and process logs. It is deleted when the
//! test passes and kept (its path printed) when the test fails, so the logs can be read.
//! `E2E_KEEP=1` keeps it in every case (to read a passing run's or a benchmark's logs).

use std::path::{Path, PathBuf};

/// A per-test temporary directory; see the module documentation.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates `e2e-<name>-XXXX` in the system temp directory.
    pub fn new(name: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-{name}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        let path = dir.path().to_path_buf();
        TestDir { dir: Some(dir), path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if (failed || std::env::var_os("E2E_KEEP").is_some())
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            let why = if failed { "test failed" } else { "E2E_KEEP is set" };
            eprintln!("{why}: logs and data kept in {}", kept.display());
        }
    }
}
