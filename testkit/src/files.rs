//! Files of a test: its scratch directory, the repository it runs from, executable scripts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The per-test scratch directory, shared with the agent's unit tests.
pub use holdfast_agent::testdir::Scratch;

/// The repository's root (the parent of `testkit/`).
pub fn repo_root() -> &'static Path {
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
    testkit.parent().unwrap_or(testkit)
}

/// Writes `text` to `dir/name` (a config file, a token file); returns its path as a flag
/// value.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path.display().to_string()
}

/// Writes an executable `#!/bin/sh` script `dir/name` (parents created) running `body`;
/// returns its path.
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("creating the script's directory");
    }
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("writing the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("making the script executable");
    path
}

/// A copy of the shipped provider `provider`'s scripts (`lifecycle-scripts/providers/…`) in
/// `dir/provider`, executable, as an operator installs them; the directory.
pub fn provider_scripts(dir: &Path, provider: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let shipped = repo_root()
        .join("lifecycle-scripts/providers")
        .join(provider);
    let to = dir.join("provider");
    std::fs::create_dir_all(&to).expect("creating the provider directory");
    for entry in std::fs::read_dir(&shipped).expect("the shipped provider scripts") {
        let from = entry.expect("a provider script").path();
        if !from.is_file() {
            continue;
        }
        let script = to.join(from.file_name().expect("a file name"));
        std::fs::copy(&from, &script).expect("copying a provider script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("making a provider script executable");
    }
    to
}

/// A coordinator config in `dir/coordinator.toml` that takes replacement hosts from the exec
/// provider's scripts in `provider` (each call may run `timeout_ms`, two tries 100 ms apart);
/// the path, for `--config`.
pub fn exec_provider_config(dir: &Path, provider: &Path, timeout_ms: u64) -> String {
    write_file(
        dir,
        "coordinator.toml",
        &format!(
            "provider = \"exec\"\nprovider_dir = \"{}\"\nprovider_timeout_ms = {timeout_ms}\n\
             provider_attempts = 2\nprovider_retry_ms = 100\n",
            provider.display()
        ),
    )
}

/// Writes `ca.pem` and, for each `(name, names)`, `name.pem` and `name.key`: a certificate for
/// those DNS names or IP addresses (the first is its identity), all signed by that one CA, into
/// `dir`.
pub fn certificates(dir: &Path, leaves: &[(&str, &[&str])]) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, names) in leaves {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}
