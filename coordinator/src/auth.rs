//! Who may call the operator API: bearer tokens with a role, read from the file named by
//! `operator_tokens_file`, and the check made on every operator call. The agent stream is not
//! covered here (agents are authenticated by the transport, not by tokens).
//!
//! The file holds one `<role> <token>` per line; `#` starts a comment. A `viewer` may only read
//! (get, list, watch); an `operator` may do everything. A method this module does not know
//! needs `operator`, so a call added later is closed until someone decides otherwise.

use std::path::{Path, PathBuf};

use tonic::Status;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read-only calls: jobs, nodes, incidents, the event stream.
    Viewer,
    /// Every call, including submit, stop, cordon, uncordon, check and agent restarts.
    Operator,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// Tokens shorter than this are refused: they can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// Operator API methods that only read; everything else needs [`Role::Operator`].
const READ_ONLY_METHODS: &[&str] = &[
    "GetJob",
    "ListJobs",
    "ListNodes",
    "ListIncidents",
    "WatchEvents",
];

/// The role a method needs.
pub fn required_role(method: &str) -> Role {
    if READ_ONLY_METHODS.contains(&method) {
        Role::Viewer
    } else {
        Role::Operator
    }
}

/// A token file that cannot be used, named by its path and line.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("operator_tokens_file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("operator_tokens_file {path} line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("operator_tokens_file {path}: no tokens (an empty file would lock everyone out)")]
    Empty { path: PathBuf },
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the operator API needs a token: send `authorization: Bearer <token>`")]
    MissingToken,
    #[error("the operator API refused the token: it is not in operator_tokens_file")]
    UnknownToken,
    #[error("{method} needs the operator role; this token has the {role} role")]
    Role { method: String, role: &'static str },
}

impl From<Denied> for Status {
    fn from(d: Denied) -> Status {
        match d {
            Denied::MissingToken | Denied::UnknownToken => Status::unauthenticated(d.to_string()),
            Denied::Role { .. } => Status::permission_denied(d.to_string()),
        }
    }
}

/// The tokens the operator API accepts.
#[derive(Clone)]
pub struct OperatorTokens {
    entries: Vec<(Role, Vec<u8>)>,
}

// Tokens are secrets: debug output shows how many there are, never their text.
impl std::fmt::Debug for OperatorTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OperatorTokens({} tokens)", self.entries.len())
    }
}

impl OperatorTokens {
    /// Reads and checks the token file at `path`.
    pub fn load(path: &Path) -> Result<OperatorTokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // Anyone who can read the file can act as an operator: say so, but do not refuse, since
        // group-readable may be deliberate (a config-management group).
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o004 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "operator_tokens_file is readable by every user; chmod 600 it"
                );
            }
        }
        Self::parse(&text, path)
    }

    /// Parses the text of a token file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<OperatorTokens, TokenFileError> {
        let bad = |line: usize, reason: String| TokenFileError::Line {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad(i + 1, "expected `<role> <token>`".into()));
            };
            let role = match role {
                "viewer" => Role::Viewer,
                "operator" => Role::Operator,
                other => {
                    return Err(bad(
                        i + 1,
                        format!("unknown role {other:?} (expected viewer or operator)"),
                    ))
                }
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(
                    i + 1,
                    format!(
                        "token is {} characters; at least {MIN_TOKEN_LEN} are needed",
                        token.len()
                    ),
                ));
            }
            entries.push((role, token.as_bytes().to_vec()));
        }
        if entries.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(OperatorTokens { entries })
    }

    /// The role of `token`, if it is one of ours. Every stored token is compared in full, in
    /// time that depends only on the lengths, so timing reveals neither a prefix nor which
    /// entry matched.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let mut found = None;
        for (role, known) in &self.entries {
            if constant_time_eq(known, token.as_bytes()) {
                found = Some(*role);
            }
        }
        found
    }

    /// Decides a call to `method` carrying the `authorization` header value `authorization`.
    pub fn authorize(&self, method: &str, authorization: Option<&str>) -> Result<Role, Denied> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Denied::MissingToken)?;
        let role = self.role_of(token).ok_or(Denied::UnknownToken)?;
        if required_role(method) == Role::Operator && role != Role::Operator {
            return Err(Denied::Role {
                method: method.to_string(),
                role: role.name(),
            });
        }
        Ok(role)
    }
}

/// True when the call came with a viewer's token (not when tokens are off: then everyone is
/// an operator).
pub fn is_viewer<T>(request: &tonic::Request<T>) -> bool {
    request.extensions().get::<Role>() == Some(&Role::Viewer)
}

/// Equal when `a` and `b` hold the same bytes, without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The gRPC method name of an operator API request path
/// (`/holdfast.v1.OperatorService/ListNodes` → `Some("ListNodes")`); `None` for a path of
/// another service. An empty method name is one [`required_role`] treats as mutating.
pub fn operator_method(path: &str) -> Option<&str> {
    use holdfast_proto::v1::operator_service_server::OperatorServiceServer;
    use tonic::server::NamedService;
    const SERVICE: &str = <OperatorServiceServer<()> as NamedService>::NAME;
    path.strip_prefix('/')?
        .strip_prefix(SERVICE)?
        .strip_prefix('/')
}

/// Axum middleware in front of the gRPC services: lets an operator API call through only when
/// its bearer token's role allows the method (other services pass untouched); otherwise answers with a gRPC status (UNAUTHENTICATED or
/// PERMISSION_DENIED), which the gRPC-web layer outside turns into a gRPC-web answer.
pub async fn enforce(
    axum::extract::State(tokens): axum::extract::State<std::sync::Arc<OperatorTokens>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(method) = operator_method(request.uri().path()).map(str::to_string) else {
        return next.run(request).await;
    };
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match tokens.authorize(&method, header) {
        Ok(role) => {
            // The handlers see the role: a viewer is shown less (job environment values).
            request.extensions_mut().insert(role);
            next.run(request).await
        }
        Err(denied) => {
            tracing::warn!(%method, "operator API call refused: {denied}");
            Status::from(denied).into_http()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIEWER: &str = "viewer-token-0123456789";
    const OPERATOR: &str = "operator-token-0123456789";

    fn tokens() -> OperatorTokens {
        OperatorTokens::parse(
            &format!("# who may call\nviewer {VIEWER}\n\noperator {OPERATOR}  # ops team\n"),
            Path::new("tokens"),
        )
        .unwrap()
    }

    #[test]
    fn parses_roles_comments_and_blank_lines() {
        let t = tokens();
        assert_eq!(t.role_of(VIEWER), Some(Role::Viewer));
        assert_eq!(t.role_of(OPERATOR), Some(Role::Operator));
        assert_eq!(t.role_of("operator-token-012345678"), None);
        assert_eq!(t.role_of(""), None);
        assert!(
            !format!("{t:?}").contains(VIEWER),
            "Debug must not leak tokens"
        );
    }

    #[test]
    fn bad_lines_are_refused_naming_file_and_line() {
        let path = Path::new("/etc/holdfast/tokens");
        let cases = [
            (
                "viewer 0123456789abcdef\nadmin 0123456789abcdef\n",
                2,
                "admin",
            ),
            ("# c\n\noperator short\n", 3, "at least 16"),
            ("operator\n", 1, "expected `<role> <token>`"),
            ("viewer a-token-long-enough-1 extra\n", 1, "expected"),
        ];
        for (text, line, what) in cases {
            let err = OperatorTokens::parse(text, path).unwrap_err().to_string();
            let want = format!("operator_tokens_file /etc/holdfast/tokens line {line}: ");
            assert!(err.starts_with(&want), "{text:?}: {err}");
            assert!(err.contains(what), "{text:?}: {err}");
        }
        let err = OperatorTokens::parse("# nothing\n", path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no tokens"), "{err}");
    }

    #[test]
    fn roles_decide_which_methods_a_token_may_call() {
        let t = tokens();
        let viewer = format!("Bearer {VIEWER}");
        let operator = format!("Bearer {OPERATOR}");
        for read in READ_ONLY_METHODS {
            assert_eq!(t.authorize(read, Some(&viewer)), Ok(Role::Viewer));
            assert_eq!(t.authorize(read, Some(&operator)), Ok(Role::Operator));
        }
        for write in [
            "SubmitJob",
            "StopJob",
            "Cordon",
            "Uncordon",
            "CheckNode",
            "RestartAgent",
            "SomethingNew",
            "",
        ] {
            assert_eq!(t.authorize(write, Some(&operator)), Ok(Role::Operator));
            let err = t.authorize(write, Some(&viewer)).unwrap_err();
            assert_eq!(
                err,
                Denied::Role {
                    method: write.into(),
                    role: "viewer"
                }
            );
            assert_eq!(
                Status::from(err).code(),
                tonic::Code::PermissionDenied,
                "{write}"
            );
        }
        for missing in [
            None,
            Some(""),
            Some("Bearer "),
            Some(VIEWER),
            Some("Basic abc"),
        ] {
            let err = t.authorize("ListNodes", missing).unwrap_err();
            assert_eq!(err, Denied::MissingToken, "{missing:?}");
            assert_eq!(Status::from(err).code(), tonic::Code::Unauthenticated);
        }
        let err = t
            .authorize("ListNodes", Some("Bearer not-a-known-token-at-all"))
            .unwrap_err();
        assert_eq!(Status::from(err).code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn method_names_come_from_the_request_path() {
        assert_eq!(
            operator_method("/holdfast.v1.OperatorService/ListNodes"),
            Some("ListNodes")
        );
        assert_eq!(operator_method("/holdfast.v1.OperatorService/"), Some(""));
        assert_eq!(operator_method("/holdfast.v1.AgentService/Session"), None);
        assert_eq!(
            operator_method("/holdfast.v1.OperatorServiceX/ListNodes"),
            None
        );
        assert_eq!(operator_method(""), None);
    }
}
