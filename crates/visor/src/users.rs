//! `visor user …` and `visor group …`: managing Visor's own users and groups, as an admin,
//! through the API (so every change is authorised and audited like any other write).
//!
//! Users and groups are Secrets in `kube-system` (see `visor_apiserver::auth::users`).
//! Passwords are read from `VISOR_PASSWORD` or a prompt and hashed with argon2id here, on the
//! admin's machine: the password itself is never sent to the server.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use http::Request;
use serde_json::{Value, json};
use visor_apiserver::auth::users::{
    self, GROUP_PREFIX, IDENTITY_NAMESPACE, USER_PREFIX, group_members, group_secret, secret_field,
    user_secret, valid_name,
};

/// Environment variable that supplies a password instead of a prompt.
pub const PASSWORD_ENV: &str = "VISOR_PASSWORD";
/// How often a read-modify-write of a group is retried when another writer got there first.
const CONFLICT_RETRIES: usize = 5;

#[derive(Debug, Args)]
pub struct UserArgs {
    /// The admin kubeconfig [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (password from $VISOR_PASSWORD or a prompt).
    Add {
        name: String,
        /// Groups to add the user to (created if missing); repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Set a user's password.
    Passwd { name: String },
    /// Delete a user and remove them from every group.
    Delete { name: String },
    /// List users and their groups.
    List,
}

#[derive(Debug, Args)]
pub struct GroupArgs {
    /// The admin kubeconfig [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create an empty group.
    Add { name: String },
    /// Delete a group.
    Delete { name: String },
    /// Add a user to a group.
    AddMember { group: String, user: String },
    /// Remove a user from a group.
    RemoveMember { group: String, user: String },
    /// List groups and their members.
    List,
}

/// A client for the kubeconfig at `path`, or the default one (`$KUBECONFIG`, `~/.kube/config`).
pub async fn client(path: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match path {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig (pass --kubeconfig)")?,
    };
    kube::Client::try_from(config).context("building a client")
}

fn secrets_path(name: Option<&str>) -> String {
    match name {
        Some(name) => format!("/api/v1/namespaces/{IDENTITY_NAMESPACE}/secrets/{name}"),
        None => format!("/api/v1/namespaces/{IDENTITY_NAMESPACE}/secrets"),
    }
}

/// GETs or DELETEs one of the identity Secrets; whether it was there.
async fn secret_found(
    client: &kube::Client,
    method: http::Method,
    secret: &str,
) -> anyhow::Result<bool> {
    Ok(
        send(client, method, &secrets_path(Some(secret)), JSON, None)
            .await?
            .is_some(),
    )
}

/// The API's answer to a request, `None` for 404.
pub async fn send(
    client: &kube::Client,
    method: http::Method,
    path: &str,
    content_type: &str,
    body: Option<&Value>,
) -> anyhow::Result<Option<Value>> {
    let body = body
        .map(serde_json::to_vec)
        .transpose()?
        .unwrap_or_default();
    let request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body)?;
    match client.request::<Value>(request).await {
        Ok(value) => Ok(Some(value)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(kube::Error::Api(status)) => bail!("{method} {path}: {}", status.message),
        Err(e) => Err(e).with_context(|| format!("{method} {path}")),
    }
}

const JSON: &str = "application/json";

/// Reads a new password: `$VISOR_PASSWORD`, else a prompt asked twice.
fn new_password(user: &str) -> anyhow::Result<String> {
    if let Ok(password) = std::env::var(PASSWORD_ENV) {
        if password.is_empty() {
            bail!("{PASSWORD_ENV} is empty");
        }
        return Ok(password);
    }
    let first = rpassword::prompt_password(format!("New password for {user}: "))
        .context("reading the password")?;
    let second = rpassword::prompt_password("Repeat it: ").context("reading the password")?;
    if first != second {
        bail!("the passwords differ");
    }
    if first.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(first)
}

fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    valid_name(name).map_err(|why| anyhow::anyhow!("{what} name {name:?} {why}"))
}

async fn list_identities(client: &kube::Client, kind: &str) -> anyhow::Result<Vec<Value>> {
    let path = format!(
        "{}?labelSelector=visor.io%2Fidentity%3D{kind}",
        secrets_path(None)
    );
    let list = send(client, http::Method::GET, &path, JSON, None)
        .await?
        .unwrap_or_default();
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Changes a group's members with `change` (returning false to leave it as it is), retrying
/// when someone else changed the group in between. Creates the group if `create` is set.
async fn update_group(
    client: &kube::Client,
    group: &str,
    create: bool,
    change: impl Fn(&mut BTreeSet<String>) -> bool,
) -> anyhow::Result<()> {
    let name = format!("{GROUP_PREFIX}{group}");
    for _ in 0..CONFLICT_RETRIES {
        let current = send(
            client,
            http::Method::GET,
            &secrets_path(Some(&name)),
            JSON,
            None,
        )
        .await?;
        let Some(current) = current else {
            if !create {
                bail!("no group {group:?}");
            }
            let mut members = BTreeSet::new();
            change(&mut members);
            let created = send(
                client,
                http::Method::POST,
                &secrets_path(None),
                JSON,
                Some(&group_secret(group, &members)),
            )
            .await;
            match created {
                Ok(_) => return Ok(()),
                Err(e) if e.to_string().contains("already exists") => continue,
                Err(e) => return Err(e),
            }
        };
        let mut members = group_members(&current);
        if !change(&mut members) {
            return Ok(());
        }
        let mut next = group_secret(group, &members);
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        match send(
            client,
            http::Method::PUT,
            &secrets_path(Some(&name)),
            JSON,
            Some(&next),
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("has been modified") => continue,
            Err(e) => return Err(e),
        }
    }
    bail!("group {group:?} kept changing; try again")
}

pub async fn run_user(args: UserArgs) -> anyhow::Result<()> {
    let client = client(args.kubeconfig.as_deref()).await?;
    match args.command {
        UserCommand::Add { name, groups } => {
            check_name("user", &name)?;
            for group in &groups {
                check_name("group", group)?;
            }
            let hash = users::hash_password(&new_password(&name)?)?;
            let created = send(
                &client,
                http::Method::POST,
                &secrets_path(None),
                JSON,
                Some(&user_secret(&name, &hash)),
            )
            .await;
            if let Err(e) = created {
                if e.to_string().contains("already exists") {
                    bail!("user {name:?} already exists (use `visor user passwd`)");
                }
                return Err(e);
            }
            for group in &groups {
                update_group(&client, group, true, |m| m.insert(name.clone())).await?;
            }
            println!("user {name} created");
        }
        UserCommand::Passwd { name } => {
            check_name("user", &name)?;
            let secret = format!("{USER_PREFIX}{name}");
            if !secret_found(&client, http::Method::GET, &secret).await? {
                bail!("no user {name:?}");
            }
            let hash = users::hash_password(&new_password(&name)?)?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(hash);
            let patch = json!({ "data": { "password-hash": b64 } });
            send(
                &client,
                http::Method::PATCH,
                &secrets_path(Some(&secret)),
                "application/merge-patch+json",
                Some(&patch),
            )
            .await?
            .with_context(|| format!("no user {name:?}"))?;
            println!("password of {name} changed");
        }
        UserCommand::Delete { name } => {
            check_name("user", &name)?;
            let secret = format!("{USER_PREFIX}{name}");
            let deleted = secret_found(&client, http::Method::DELETE, &secret).await?;
            if !deleted {
                bail!("no user {name:?}");
            }
            for group in list_identities(&client, "group").await? {
                if group_members(&group).contains(&name)
                    && let Some(group_name) = secret_field(&group, "group")
                {
                    update_group(&client, &group_name, false, |m| m.remove(&name)).await?;
                }
            }
            println!("user {name} deleted");
        }
        UserCommand::List => {
            let groups = list_identities(&client, "group").await?;
            println!("{:<30} GROUPS", "NAME");
            for user in list_identities(&client, "user").await? {
                let Some(name) = secret_field(&user, "username") else {
                    continue;
                };
                let member_of: Vec<String> = groups
                    .iter()
                    .filter(|g| group_members(g).contains(&name))
                    .filter_map(|g| secret_field(g, "group"))
                    .collect();
                println!("{name:<30} {}", member_of.join(","));
            }
        }
    }
    Ok(())
}

pub async fn run_group(args: GroupArgs) -> anyhow::Result<()> {
    let client = client(args.kubeconfig.as_deref()).await?;
    match args.command {
        GroupCommand::Add { name } => {
            check_name("group", &name)?;
            let created = send(
                &client,
                http::Method::POST,
                &secrets_path(None),
                JSON,
                Some(&group_secret(&name, &BTreeSet::new())),
            )
            .await;
            if let Err(e) = created {
                if e.to_string().contains("already exists") {
                    bail!("group {name:?} already exists");
                }
                return Err(e);
            }
            println!("group {name} created");
        }
        GroupCommand::Delete { name } => {
            check_name("group", &name)?;
            let secret = format!("{GROUP_PREFIX}{name}");
            if !secret_found(&client, http::Method::DELETE, &secret).await? {
                bail!("no group {name:?}");
            }
            println!("group {name} deleted");
        }
        GroupCommand::AddMember { group, user } => {
            check_name("group", &group)?;
            check_name("user", &user)?;
            let secret = format!("{USER_PREFIX}{user}");
            if !secret_found(&client, http::Method::GET, &secret).await? {
                bail!("no user {user:?}");
            }
            update_group(&client, &group, false, |m| m.insert(user.clone())).await?;
            println!("{user} added to {group}");
        }
        GroupCommand::RemoveMember { group, user } => {
            check_name("group", &group)?;
            update_group(&client, &group, false, |m| m.remove(&user)).await?;
            println!("{user} removed from {group}");
        }
        GroupCommand::List => {
            println!("{:<30} MEMBERS", "NAME");
            for group in list_identities(&client, "group").await? {
                let Some(name) = secret_field(&group, "group") else {
                    continue;
                };
                let members: Vec<String> = group_members(&group).into_iter().collect();
                println!("{name:<30} {}", members.join(","));
            }
        }
    }
    Ok(())
}
