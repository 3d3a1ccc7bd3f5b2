//! `holdfast token`: join tokens for new agents, kept in the coordinator's PKI directory (run
//! on the coordinator's host, as a user who can read that directory). The serving coordinator
//! reads them at each join, so a new or revoked token counts at once.

use std::path::PathBuf;
use std::time::Duration;

use holdfast_coordinator::pki::Pki;

/// Where the installed coordinator keeps its PKI (`deploy/holdfast-coordinator.service`).
pub const DEFAULT_PKI_DIR: &str = "/var/lib/holdfast/coordinator/pki";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The coordinator's PKI directory.
    #[arg(long, env = "HOLDFAST_PKI_DIR", default_value = DEFAULT_PKI_DIR, global = true)]
    pki_dir: PathBuf,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand, Debug)]
enum TokenCommand {
    /// Make a join token and print the command that joins an agent with it.
    Create {
        /// How long it is valid: `30m`, `1h`, `7d`; `0` never expires.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
        /// What it is for (shown by `token list`).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (never their secrets).
    List,
    /// Revoke a join token by its id (the part before the dot).
    Revoke { id: String },
}

/// `30s`, `30m`, `1h`, `7d`, or `0`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a number followed by s, m, h or d (e.g. 24h)"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d (e.g. 24h)")),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let pki = Pki::new(&args.pki_dir);
    if !args.pki_dir.join("ca.pem").exists() {
        anyhow::bail!(
            "{}: no cluster CA here (the coordinator makes it on its first start; give \
             --pki-dir or HOLDFAST_PKI_DIR if it keeps it elsewhere)",
            args.pki_dir.display()
        );
    }
    let now = holdfast_coordinator::now_ms();
    match args.command {
        TokenCommand::Create { ttl, description } => {
            let token = pki.create_join_token(ttl, &description, now)?;
            println!("{token}");
            eprintln!(
                "join an agent with:\n  holdfast agent --coordinator https://<coordinator>:7070 --join {token} --ca-hash {}",
                pki.ca_hash()?
            );
        }
        TokenCommand::List => {
            println!("{:<8} {:<25} {:>5}  DESCRIPTION", "ID", "EXPIRES", "USES");
            for t in pki.join_tokens()? {
                let expires = if t.expires_unix_ms == 0 {
                    "never".to_string()
                } else if t.expires_unix_ms <= now {
                    "expired".to_string()
                } else {
                    let left = (t.expires_unix_ms - now) / 1000;
                    format!("in {}h{:02}m", left / 3600, (left % 3600) / 60)
                };
                println!(
                    "{:<8} {:<25} {:>5}  {}",
                    t.id, expires, t.uses, t.description
                );
            }
        }
        TokenCommand::Revoke { id } => {
            if !pki.revoke_join_token(&id)? {
                anyhow::bail!("no join token with id {id:?} (holdfast token list)");
            }
            println!("revoked join token {id}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_ttl("0").unwrap(), Duration::ZERO);
        for bad in ["", "h", "1y", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
