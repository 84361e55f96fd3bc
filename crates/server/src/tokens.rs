//! The gateway's token policy from its flags: static tokens (`--tokens`, `--tokens-file`),
//! EdgeAuth applications (`--edge-auth-file`), or development mode. The check itself is the
//! core's ([`clientmq_core::TokenPolicy`]); this module reads the files and says in the log what
//! the gateway will accept.

use std::path::{Path, PathBuf};

use clientmq_core::TokenPolicy;
use clientmq_core::edge_auth::{EdgeAuth, SecretTableError, StaticTokens};

/// A token configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {flag} {path}: {reason}")]
    Unreadable { flag: &'static str, path: PathBuf, reason: String },
    #[error("--tokens-file {0} holds no token (one a line; blank lines and # comments are ignored)")]
    EmptyFile(PathBuf),
    #[error("--edge-auth-file {path}: {error}")]
    EdgeAuthFile { path: PathBuf, error: SecretTableError },
    #[error("--edge-auth-file {0} names no application (lines `APPLICATION_ID SECRET`)")]
    NoApplication(PathBuf),
    #[error("--dev-accept-any-token cannot be combined with --tokens, --tokens-file or --edge-auth-file")]
    DevModeWithTokens,
}

fn read(flag: &'static str, path: &Path) -> Result<String, TokenError> {
    std::fs::read_to_string(path).map_err(|e| TokenError::Unreadable {
        flag,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Builds the policy from the CLI's sources.
pub fn policy(
    dev_accept_any: bool,
    tokens: &[String],
    tokens_file: Option<&Path>,
    edge_auth_file: Option<&Path>,
) -> Result<TokenPolicy, TokenError> {
    let mut accepted: Vec<String> =
        tokens.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).map(str::to_owned).collect();
    if let Some(path) = tokens_file {
        let text = read("--tokens-file", path)?;
        let from_file: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        if from_file.is_empty() {
            return Err(TokenError::EmptyFile(path.to_owned()));
        }
        accepted.extend(from_file);
    }
    let edge = match edge_auth_file {
        None => EdgeAuth::default(),
        Some(path) => {
            let edge = EdgeAuth::parse(&read("--edge-auth-file", path)?)
                .map_err(|error| TokenError::EdgeAuthFile { path: path.to_owned(), error })?;
            if edge.is_empty() {
                return Err(TokenError::NoApplication(path.to_owned()));
            }
            edge
        }
    };
    let configured = !accepted.is_empty() || !edge.is_empty();
    match (dev_accept_any, configured) {
        (true, true) => Err(TokenError::DevModeWithTokens),
        (true, false) => Ok(TokenPolicy::AcceptAny),
        (false, false) => Ok(TokenPolicy::DenyAll),
        (false, true) => Ok(TokenPolicy::Check { tokens: StaticTokens::new(accepted), edge }),
    }
}

/// Says in the log what will be accepted (never a token or a secret).
pub fn announce(policy: &TokenPolicy) {
    match policy {
        TokenPolicy::AcceptAny => tracing::warn!(
            "DEVELOPMENT MODE: any non-empty authentication token is accepted (--dev-accept-any-token); \
             do not use in production"
        ),
        TokenPolicy::Check { tokens, edge } => tracing::info!(
            tokens = tokens.len(),
            applications = edge.len(),
            "accepting configured static tokens and EdgeAuth digest tokens of the configured applications"
        ),
        TokenPolicy::DenyAll => tracing::warn!(
            "no authentication tokens configured: every pcast.Authenticate will be refused; \
             pass --tokens, --tokens-file, --edge-auth-file, or --dev-accept-any-token for local development"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> std::net::IpAddr {
        "10.0.0.1".parse().unwrap()
    }

    #[test]
    fn policies_from_sources() {
        let none: &[String] = &[];
        assert!(matches!(policy(false, none, None, None), Ok(TokenPolicy::DenyAll)));
        assert!(matches!(policy(true, none, None, None), Ok(TokenPolicy::AcceptAny)));
        let list = ["a".to_owned(), " ".to_owned()];
        let checked = policy(false, &list, None, None).unwrap();
        assert!(checked.check("a", ip(), None, 0).is_ok() && checked.check("b", ip(), None, 0).is_err());
        assert_eq!(policy(true, &list, None, None).unwrap_err(), TokenError::DevModeWithTokens);
    }

    #[test]
    fn token_and_secret_files() {
        let dir = std::env::temp_dir().join(format!("clientmq-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(&file, "# ops tokens\n\n alpha \nbeta\n").unwrap();
        let from_file = policy(false, &[], Some(&file), None).unwrap();
        assert!(
            from_file.check("alpha", ip(), None, 0).is_ok() && from_file.check("beta", ip(), None, 0).is_ok()
        );
        std::fs::write(&file, "# nothing\n").unwrap();
        assert_eq!(policy(false, &[], Some(&file), None).unwrap_err(), TokenError::EmptyFile(file.clone()));
        let secrets = dir.join("edge");
        std::fs::write(&secrets, "# apps\nmy-app s3cret\n").unwrap();
        assert!(matches!(policy(false, &[], None, Some(&secrets)), Ok(TokenPolicy::Check { .. })));
        assert_eq!(policy(true, &[], None, Some(&secrets)).unwrap_err(), TokenError::DevModeWithTokens);
        std::fs::write(&secrets, "one-field-only\n").unwrap();
        let bad = policy(false, &[], None, Some(&secrets)).unwrap_err();
        assert!(bad.to_string().contains("line 1"), "{bad}");
        assert!(!bad.to_string().contains("one-field-only"), "no secret material in errors: {bad}");
        let missing = dir.join("missing");
        assert!(matches!(policy(false, &[], Some(&missing), None), Err(TokenError::Unreadable { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
