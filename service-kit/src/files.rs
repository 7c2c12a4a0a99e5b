//! Files holding secrets.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `contents` to `path`, readable and writable by the owner only.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}

/// The token kept in `path`, or a new one (`<prefix>_<64 hex>`) written there, owner-only,
/// when the file is missing or empty. Returns the token and whether it was created.
pub fn load_or_create_token(path: &Path, prefix: &str) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok((text.trim().to_string(), false)),
        Ok(_) => create_token(path, prefix),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => create_token(path, prefix),
        Err(err) => Err(err),
    }
}

/// The token given in the configuration, else the one kept in `path` (generated there on
/// first start, owner-only, and logged so an operator knows where to find it).
pub fn configured_or_stored_token(
    configured: Option<&str>,
    path: &Path,
    prefix: &str,
) -> std::io::Result<String> {
    if let Some(token) = configured {
        return Ok(token.to_string());
    }
    let (token, created) = load_or_create_token(path, prefix)?;
    if created {
        tracing::info!(path = %path.display(), "generated a token");
    }
    Ok(token)
}

fn create_token(path: &Path, prefix: &str) -> std::io::Result<(String, bool)> {
    let token = crate::auth::new_token(prefix);
    write_private(path, &token)?;
    Ok((token, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let (first, created) = load_or_create_token(&path, "op").unwrap();
        assert!(created && first.starts_with("op_"));
        assert_eq!(load_or_create_token(&path, "op").unwrap(), (first, false));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "  \n").unwrap();
        assert!(load_or_create_token(&path, "op").unwrap().1, "an empty file gets a new token");
    }

    #[test]
    fn a_configured_token_wins_over_the_stored_one_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert_eq!(configured_or_stored_token(Some("given"), &path, "op").unwrap(), "given");
        assert!(!path.exists());
        let stored = configured_or_stored_token(None, &path, "op").unwrap();
        assert!(stored.starts_with("op_"));
        assert_eq!(configured_or_stored_token(None, &path, "op").unwrap(), stored);
    }
}
