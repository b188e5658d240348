//! `visor token …`: join tokens for hosts (create, list, delete, as an admin through the API),
//! and the server's authentication and audit flags ([`SecurityArgs`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use visor_apiserver::audit::{self, AuditConfig};
use visor_apiserver::auth::bootstrap::{
    JoinToken, TOKEN_NAMESPACE, TOKEN_SECRET_PREFIX, TOKEN_SECRET_TYPE,
};
use visor_apiserver::auth::{self, AuthConfig, users::secret_field};

use crate::users::{client, send};

/// `visor server` flags for authentication and the audit log.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// How long login tokens are valid (`10h`, `30m`, `1h30m`).
    #[arg(long, default_value = "10h", value_parser = parse_duration)]
    pub token_lifetime: Duration,
    /// Create a new token signing key at start; tokens signed with older keys stay valid
    /// until they expire.
    #[arg(long)]
    pub rotate_signing_key: bool,
    /// Size at which the audit log rotates (bytes, or with a K/M/G or Ki/Mi/Gi suffix).
    #[arg(long, default_value = "100Mi", value_parser = parse_size)]
    pub audit_max_size: u64,
    /// Rotated audit log files kept.
    #[arg(long, default_value_t = audit::DEFAULT_MAX_FILES)]
    pub audit_max_files: usize,
}

impl Default for SecurityArgs {
    fn default() -> Self {
        SecurityArgs {
            token_lifetime: auth::DEFAULT_TOKEN_LIFETIME,
            rotate_signing_key: false,
            audit_max_size: audit::DEFAULT_MAX_SIZE,
            audit_max_files: audit::DEFAULT_MAX_FILES,
        }
    }
}

impl SecurityArgs {
    pub fn auth(&self) -> AuthConfig {
        AuthConfig {
            token_lifetime: self.token_lifetime,
            rotate_signing_key: self.rotate_signing_key,
        }
    }

    pub fn audit(&self) -> AuditConfig {
        AuditConfig {
            max_size: self.audit_max_size,
            max_files: self.audit_max_files,
        }
    }
}

/// Parses a positive duration such as `10h`, `90m`, `1h30m` or `3600s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration: jiff::SignedDuration = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 10h or 30m: {e}"))?;
    if duration.is_negative() || duration.is_zero() {
        return Err(format!("{text:?} must be positive"));
    }
    duration.try_into().map_err(|e| format!("{text:?}: {e}"))
}

/// Parses a size: plain bytes, or with `K`/`M`/`G` (powers of 1000) or `Ki`/`Mi`/`Gi`
/// (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 100Mi"))?;
    let factor: u64 = match unit {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}")),
    };
    number
        .checked_mul(factor)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The admin kubeconfig [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it (`visor agent --token …` uses it).
    Create {
        /// How long the token is valid; `0` for no expiry.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What the token is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// List join tokens (ids, expiry, description; never the secrets).
    List,
    /// Delete a join token, by id or by the whole token.
    Delete { token: String },
}

fn tokens_path(name: Option<&str>) -> String {
    match name {
        Some(name) => format!("/api/v1/namespaces/{TOKEN_NAMESPACE}/secrets/{name}"),
        None => format!("/api/v1/namespaces/{TOKEN_NAMESPACE}/secrets"),
    }
}

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    let client = client(args.kubeconfig.as_deref()).await?;
    match args.command {
        TokenCommand::Create { ttl, description } => {
            let expiration = if ttl.trim() == "0" {
                None
            } else {
                let ttl = parse_duration(&ttl).map_err(anyhow::Error::msg)?;
                let at = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::try_from(ttl)?)
                    .context("the ttl is too long")?;
                Some(at.to_string())
            };
            let token = JoinToken::generate()?;
            let secret = token.to_secret(expiration.as_deref(), description.as_deref());
            send(
                &client,
                http::Method::POST,
                &tokens_path(None),
                "application/json",
                Some(&secret),
            )
            .await?;
            println!("{}", token.reveal());
        }
        TokenCommand::List => {
            let list = send(
                &client,
                http::Method::GET,
                &tokens_path(None),
                "application/json",
                None,
            )
            .await?
            .unwrap_or_default();
            println!("{:<8} {:<22} DESCRIPTION", "ID", "EXPIRES");
            for secret in list["items"].as_array().into_iter().flatten() {
                if secret["type"].as_str() != Some(TOKEN_SECRET_TYPE) {
                    continue;
                }
                let id = secret_field(secret, "token-id").unwrap_or_default();
                let expires = secret_field(secret, "expiration").unwrap_or_else(|| "never".into());
                let description = secret_field(secret, "description").unwrap_or_default();
                println!("{id:<8} {expires:<22} {description}");
            }
        }
        TokenCommand::Delete { token } => {
            let id = token.split('.').next().unwrap_or_default();
            if id.len() != 6
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                bail!("{id:?} is not a token id (6 lower-case letters or digits)");
            }
            let name = format!("{TOKEN_SECRET_PREFIX}{id}");
            send(
                &client,
                http::Method::DELETE,
                &tokens_path(Some(&name)),
                "application/json",
                None,
            )
            .await?
            .with_context(|| format!("no join token {id:?}"))?;
            println!("join token {id} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("10h").unwrap(), Duration::from_secs(36_000));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("100Mi").unwrap(), 100 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2K").unwrap(), 2000);
        assert!(parse_size("1Ti").is_err());
        assert!(parse_size("0").is_err());
    }
}
