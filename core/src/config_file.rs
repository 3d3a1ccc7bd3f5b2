//! TOML settings files: where in the text a key is set, so that every refusal names the file,
//! the line and the key.

/// A setting that cannot work, named by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A value `validate()` refuses; loading a file turns it into `InFile` with the line.
    #[error("{key}: {reason}")]
    Invalid {
        /// The setting's key, as it is written in TOML.
        key: &'static str,
        /// What is wrong, and what would work.
        reason: String,
    },
    /// A value in a file that cannot work (bad syntax, unknown key, wrong type, failed
    /// validation), with the line that sets it (none when a default clashes with a set key).
    #[error("{path}{}: {key}: {reason}", line.map_or(String::new(), |l| format!(" line {l}")))]
    InFile {
        /// The file, as it was given.
        path: String,
        /// The 1-based line that sets the key.
        line: Option<usize>,
        /// The key at fault; empty when the parser cannot tell.
        key: String,
        /// The parser's message or the validation's reason.
        reason: String,
    },
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file, as it was given.
        path: String,
        /// The I/O error.
        reason: String,
    },
}

/// Parses a settings file's `text` and validates it, so that every refusal names the file, the
/// line and the key: a syntax or type error where the parser stopped, and a value `validate`
/// refuses ([`SettingsError::Invalid`]) at the line that sets its key.
pub fn parse_validated<T>(
    text: &str,
    path: &str,
    validate: impl FnOnce(&T) -> Result<(), SettingsError>,
) -> Result<T, SettingsError>
where
    T: serde::de::DeserializeOwned,
{
    let config: T = toml::from_str(text).map_err(|e| {
        let (line, key) = e
            .span()
            .map_or((None, String::new()), |span| locate(text, span.start));
        SettingsError::InFile {
            path: path.to_string(),
            line,
            key,
            reason: e.message().to_string(),
        }
    })?;
    validate(&config).map_err(|e| match e {
        SettingsError::Invalid { key, reason } => SettingsError::InFile {
            path: path.to_string(),
            line: key_line(text, key),
            key: key.to_string(),
            reason,
        },
        other => other,
    })?;
    Ok(config)
}

/// The 1-based line of byte `offset` in `text`, and the key that line sets (if it sets one).
pub fn locate(text: &str, offset: usize) -> (Option<usize>, String) {
    let offset = offset.min(text.len());
    let line = text[..offset].matches('\n').count() + 1;
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .unwrap_or_default();
    (Some(line), key)
}

/// The 1-based line that sets `key` at the top level of `text`.
pub fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key)
        })
        .map(|i| i + 1)
}

/// The calls that refuse the key their first argument names: `invalid` and the checks of
/// `holdfast_core::config` built on it.
const REFUSING_CALLS: [&str; 5] = ["invalid(", "positive(", "at_least_ms(", "share(", "either("];

/// The keys a config source refuses by name: every `invalid("key"` in `source`, and the same
/// for the other refusing calls (`positive`, `at_least_ms`, `share`, `either`; the call may
/// break its line after the parenthesis). Keys passed through variables are not seen.
pub fn refused_keys(source: &str) -> Vec<&str> {
    let mut keys = Vec::new();
    for call in REFUSING_CALLS {
        let mut rest = source;
        while let Some(at) = rest.find(call) {
            rest = &rest[at + call.len()..];
            let Some(quoted) = rest.trim_start().strip_prefix('"') else {
                continue;
            };
            let end = quoted
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(quoted.len());
            if end > 0 && quoted[end..].starts_with('"') {
                keys.push(&quoted[..end]);
            }
        }
    }
    keys
}

/// Checks a daemon's bad-config fixtures: each file in `dir` must be refused by `parse` (given
/// the text and the file's name) with an error that starts `NAME line N: KEY: `, as the file's
/// first line `# expect: KEY line N` says; and every key `source` refuses by name (see
/// [`refused_keys`]) must have a fixture. Returns every problem found, one line each.
pub fn check_fixtures<E: std::fmt::Display, C>(
    dir: &std::path::Path,
    source: &str,
    parse: impl Fn(&str, &str) -> Result<C, E>,
) -> Result<(), Vec<String>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| vec![format!("cannot list {}: {e}", dir.display())])?;
    let mut problems = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(e) => {
                problems.push(format!("cannot list {}: {e}", dir.display()));
                continue;
            }
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                problems.push(format!("{name}: unreadable: {e}"));
                continue;
            }
        };
        let Some((key, line)) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .and_then(|e| e.split_once(" line "))
        else {
            problems.push(format!("{name}: first line must be `# expect: KEY line N`"));
            continue;
        };
        let want = format!("{name} line {line}: {key}: ");
        match parse(&text, &name) {
            Ok(_) => problems.push(format!("{name}: expected {want:?}, but it loads")),
            Err(e) if !e.to_string().starts_with(&want) => {
                problems.push(format!(
                    "{name}: expected {want:?}, got {:?}",
                    e.to_string()
                ));
            }
            Err(_) => {}
        }
        covered.insert(key.to_string());
    }
    for key in refused_keys(source) {
        if !covered.contains(key) {
            problems.push(format!("no fixture in {} refuses {key}", dir.display()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A change to a daemon's default config (see [`assert_refusals`]).
pub type Change<C> = fn(&mut C);

/// Test support for a daemon's `validate`: each of `cases` (a key, and a change to the default
/// config that it refuses) must be refused with an error that starts with the key. Panics
/// listing every case that is not.
pub fn assert_refusals<C: Default, E: std::fmt::Display>(
    cases: &[(&str, Change<C>)],
    validate: impl Fn(&C) -> Result<(), E>,
) {
    let problems: Vec<String> = cases
        .iter()
        .filter_map(|(key, change)| {
            let mut config = C::default();
            change(&mut config);
            match validate(&config) {
                Ok(()) => Some(format!("{key}: the change is accepted")),
                Err(e) if !e.to_string().starts_with(key) => Some(format!("{key}: {e}")),
                Err(_) => None,
            }
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The fixture test of a daemon's config, as a `#[test]` fn in the calling module:
/// `holdfast_core::config_fixture_test!(AgentConfig, "config.rs");` checks every bad config in
/// the calling crate's `testdata/config` against `AgentConfig::from_toml(text, file_name)` (see
/// [`check_fixtures`]), and that every key the source file (relative to the calling file, as
/// `include_str!` takes it) refuses by name has a fixture.
#[macro_export]
macro_rules! config_fixture_test {
    ($config:ty, $source:literal) => {
        /// Each file in testdata/config is a bad config whose first line says which key and
        /// line the error must name; every key `validate()` can refuse has one.
        /// The defaults are a valid config: a daemon starts without a file.
        #[test]
        fn defaults_are_valid() {
            if let Err(e) = <$config>::default().validate() {
                panic!("the defaults are refused: {e}");
            }
        }

        #[test]
        fn every_fixture_is_refused_naming_its_file_line_and_key() {
            let dir = ::std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/config");
            if let Err(problems) = $crate::config_file::check_fixtures(
                &dir,
                include_str!($source),
                <$config>::from_toml,
            ) {
                panic!("{}", problems.join("\n"));
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_keys_are_found_across_line_breaks_and_not_through_variables() {
        let source =
            "invalid(\"a_1\", x); invalid(\n    \"b\",\n); invalid(key, y); invalid(\"\"); \
                      invalid(\"c d\")";
        assert_eq!(refused_keys(source), ["a_1", "b"]);
        let helpers = "positive(\"p\", 0); at_least_ms(\n    \"q\", 1); fn share(key: &str)";
        assert_eq!(refused_keys(helpers), ["p", "q"]);
    }

    #[test]
    fn lines_and_keys_are_located() {
        let text = "a = 1\n\"b\" = 2\n";
        assert_eq!(locate(text, 8), (Some(2), "b".to_string()));
        assert_eq!(locate(text, 999), (Some(3), String::new()));
        assert_eq!(key_line(text, "b"), Some(2));
        assert_eq!(key_line(text, "c"), None);
    }
}
