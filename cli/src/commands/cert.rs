//! `holdfast cert`: the node certificates the coordinator issued to joined agents (run on the
//! coordinator's host, like `holdfast token`). A revoked certificate's agent is refused from
//! its next connection on; the node may then join again with a token.

use std::path::PathBuf;

use holdfast_coordinator::pki::Pki;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The coordinator's PKI directory.
    #[arg(long, env = "HOLDFAST_PKI_DIR", default_value = super::token::DEFAULT_PKI_DIR, global = true)]
    pki_dir: PathBuf,
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CertCommand {
    /// List issued node certificates.
    List,
    /// Revoke a node's certificate (a retired, stolen or re-imaged host).
    Revoke { node: String },
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let pki = Pki::new(&args.pki_dir);
    match args.command {
        CertCommand::List => {
            let now = holdfast_coordinator::now_ms();
            println!("{:<24} {:<34} {:<10} TOKEN", "NODE", "SERIAL", "STATE");
            for (node, cert) in pki.issued()? {
                let state = if cert.revoked {
                    "revoked"
                } else if cert.expires_unix_ms <= now {
                    "expired"
                } else {
                    "valid"
                };
                println!(
                    "{node:<24} {:<34} {state:<10} {}",
                    cert.serial, cert.token_id
                );
            }
        }
        CertCommand::Revoke { node } => {
            if !pki.revoke_node(&node)? {
                anyhow::bail!("no certificate was issued to {node:?} (holdfast cert list)");
            }
            println!(
                "revoked the certificate of {node}; its agent is refused from its next connection"
            );
        }
    }
    Ok(0)
}
