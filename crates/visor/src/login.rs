//! `visor login`, `visor logout` and `visor install-plugin` — also run as the kubectl plugin
//! `kubectl-visor` (`kubectl visor login …`), which is this same program under another name.
//!
//! Login flow: read the password (`$VISOR_PASSWORD` or a prompt); `POST /login` with HTTP
//! Basic over TLS (verified with `--certificate-authority`, or not at all with
//! `--insecure-skip-tls-verify`); write into the kubeconfig a cluster entry for the server, a
//! user entry holding the token, one context for the server and one per namespace the server
//! says the user may use. Entries Visor's login wrote are marked with a `visor.io/login`
//! extension; a later login for the same server and user replaces its contexts (so a namespace
//! the user lost disappears), and `visor logout` removes them. Everything else in the file is
//! kept as it was.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use http::Request;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::users::PASSWORD_ENV;

/// Marks the kubeconfig entries a login wrote.
const EXTENSION: &str = "visor.io/login";
/// The name kubectl gives the plugin.
pub const PLUGIN_NAME: &str = "kubectl-visor";

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The server's URL, `https://HOST:PORT`.
    #[arg(long)]
    pub server: String,
    #[arg(long, short = 'u')]
    pub username: String,
    /// The CA certificate (PEM) that signed the server's certificate.
    #[arg(long)]
    pub certificate_authority: Option<PathBuf>,
    /// Do not verify the server's certificate (its identity is then not checked).
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
    /// The kubeconfig to write [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Only the login to this server [default: every Visor login in the file].
    #[arg(long)]
    pub server: Option<String>,
    /// The kubeconfig [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InstallPluginArgs {
    /// Where to put the `kubectl-visor` link (a directory on PATH) [default: the directory of
    /// this executable].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The command line as `visor` should parse it: when started as `kubectl-visor`, help and
/// errors name the command `kubectl visor`; the arguments are already the subcommand's.
pub fn command_line() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as_plugin = args
        .first()
        .and_then(|a| Path::new(a).file_name().map(|n| n == PLUGIN_NAME))
        .unwrap_or(false);
    if invoked_as_plugin {
        args[0] = OsString::from("kubectl visor");
    }
    args
}

/// The kubeconfig path to use: the flag, else the first of `$KUBECONFIG`, else
/// `~/.kube/config`.
pub fn kubeconfig_path(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_path_buf());
    }
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty())
        && let Some(first) = std::env::split_paths(&list).next()
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set; pass --kubeconfig")?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

/// What the server answered to a successful login.
#[derive(Debug)]
pub struct LoginAnswer {
    pub token: String,
    pub user: String,
    pub expiration: String,
    pub namespaces: Vec<String>,
}

/// `POST /login` with Basic credentials; the password travels only inside TLS.
pub async fn request_token(args: &LoginArgs, password: &str) -> anyhow::Result<LoginAnswer> {
    let url: http::Uri = args
        .server
        .parse()
        .with_context(|| format!("{:?} is not a URL", args.server))?;
    if url.scheme_str() != Some("https") {
        bail!("the server URL must start with https:// (credentials are never sent in clear)");
    }
    let mut config = kube::Config::new(url);
    match (&args.certificate_authority, args.insecure_skip_tls_verify) {
        (Some(path), _) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .map(|c| c.map(|c| c.to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing {}", path.display()))?;
            if certs.is_empty() {
                bail!("{} holds no certificate", path.display());
            }
            config.root_cert = Some(certs);
        }
        (None, true) => config.accept_invalid_certs = true,
        (None, false) => bail!(
            "pass --certificate-authority FILE (the server's CA) or --insecure-skip-tls-verify"
        ),
    }
    config.auth_info.username = Some(args.username.clone());
    config.auth_info.password = Some(password.to_string().into());
    let client = kube::Client::try_from(config).context("building a client")?;
    let request = Request::post("/login").body(Vec::new())?;
    let answer: Value = match client.request(request).await {
        Ok(answer) => answer,
        Err(kube::Error::Api(status)) if status.code == 401 => {
            bail!("login failed: wrong user name or password")
        }
        Err(kube::Error::Api(status)) => bail!("login failed: {}", status.message),
        Err(e) => return Err(e).context("login failed"),
    };
    let text = |field: &str| answer[field].as_str().unwrap_or_default().to_string();
    if text("token").is_empty() {
        bail!("the server answered the login without a token");
    }
    Ok(LoginAnswer {
        token: text("token"),
        user: text("user"),
        expiration: text("expirationTimestamp"),
        namespaces: answer["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect(),
    })
}

/// A name for a server in kubeconfig entries: its host and port.
fn cluster_name(server: &str) -> String {
    let rest = server.trim_start_matches("https://").trim_end_matches('/');
    rest.replace(['[', ']'], "").replace(':', "-")
}

fn read_kubeconfig(path: &Path) -> anyhow::Result<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        Ok(_) => Ok(json!({})),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_kubeconfig(path: &Path, config: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_saphyr::to_string(config).context("encoding the kubeconfig")?;
    let tmp = path.with_extension(format!("visor-{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // It holds a bearer token: readable by its owner only, whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// The `visor.io/login` mark of a named user or cluster entry (kept in the entry's
/// `extensions`).
fn marker(entry: &Value) -> Option<&Value> {
    let inner = if entry["user"].is_object() {
        &entry["user"]
    } else {
        &entry["cluster"]
    };
    inner["extensions"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == EXTENSION)
        .map(|e| &e["extension"])
}

fn entries_mut<'a>(config: &'a mut Value, field: &str) -> &'a mut Vec<Value> {
    if !config[field].is_array() {
        config[field] = json!([]);
    }
    config[field].as_array_mut().expect("just made an array")
}

/// Removes the login entries for `server` (every login when `None`): their users, their
/// contexts, and their clusters once no remaining context uses them. Returns the names of the
/// contexts removed.
fn remove_logins(config: &mut Value, server: Option<&str>) -> Vec<String> {
    let ours = |entry: &Value| {
        marker(entry).is_some_and(|m| server.is_none_or(|s| m["server"].as_str() == Some(s)))
    };
    let users: Vec<String> = entries_mut(config, "users")
        .iter()
        .filter(|u| ours(u))
        .filter_map(|u| u["name"].as_str().map(str::to_string))
        .collect();
    entries_mut(config, "users").retain(|u| !ours(u));
    let mut removed = Vec::new();
    entries_mut(config, "contexts").retain(|c| {
        let user = c["context"]["user"].as_str().unwrap_or_default();
        let drop = users.iter().any(|u| u == user);
        if drop && let Some(name) = c["name"].as_str() {
            removed.push(name.to_string());
        }
        !drop
    });
    let used: Vec<String> = entries_mut(config, "contexts")
        .iter()
        .filter_map(|c| c["context"]["cluster"].as_str().map(str::to_string))
        .collect();
    entries_mut(config, "clusters")
        .retain(|c| !ours(c) || used.iter().any(|u| Some(u.as_str()) == c["name"].as_str()));
    if config["current-context"]
        .as_str()
        .is_some_and(|current| removed.iter().any(|r| r == current))
    {
        config["current-context"] = json!("");
    }
    removed
}

/// Writes a login into `config`: see the module documentation. Returns the context names,
/// the server's first.
pub fn apply_login(
    config: &mut Value,
    server: &str,
    ca_pem: Option<&[u8]>,
    insecure: bool,
    answer: &LoginAnswer,
) -> Vec<String> {
    use base64::Engine as _;
    if !config.is_object() {
        *config = json!({});
    }
    config["apiVersion"] = json!("v1");
    config["kind"] = json!("Config");
    remove_logins(config, Some(server));
    let cluster = cluster_name(server);
    let user = format!("{}@{cluster}", answer.user);
    let mark =
        json!([{ "name": EXTENSION, "extension": { "server": server, "user": answer.user } }]);
    let mut cluster_entry = json!({ "server": server, "extensions": mark });
    match ca_pem {
        Some(pem) => {
            cluster_entry["certificate-authority-data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(pem))
        }
        None if insecure => cluster_entry["insecure-skip-tls-verify"] = json!(true),
        None => {}
    }
    let clusters = entries_mut(config, "clusters");
    clusters.retain(|c| c["name"].as_str() != Some(cluster.as_str()));
    clusters.push(json!({ "name": cluster, "cluster": cluster_entry }));
    let users = entries_mut(config, "users");
    users.retain(|u| u["name"].as_str() != Some(user.as_str()));
    users.push(json!({ "name": user, "user": { "token": answer.token, "extensions": mark } }));
    let mut names = vec![cluster.clone()];
    names.extend(answer.namespaces.iter().cloned());
    let contexts = entries_mut(config, "contexts");
    contexts.retain(|c| !names.iter().any(|n| Some(n.as_str()) == c["name"].as_str()));
    contexts.push(json!({ "name": cluster, "context": { "cluster": cluster, "user": user } }));
    for namespace in &answer.namespaces {
        contexts.push(json!({
            "name": namespace,
            "context": { "cluster": cluster, "user": user, "namespace": namespace },
        }));
    }
    if config["current-context"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        config["current-context"] = json!(cluster);
    }
    names
}

fn read_password(username: &str) -> anyhow::Result<String> {
    if let Ok(password) = std::env::var(PASSWORD_ENV) {
        return Ok(password);
    }
    rpassword::prompt_password(format!("Password for {username}: ")).context("reading the password")
}

pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let password = read_password(&args.username)?;
    let answer = request_token(&args, &password).await?;
    let path = kubeconfig_path(args.kubeconfig.as_deref())?;
    let ca = match &args.certificate_authority {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let mut config = read_kubeconfig(&path)?;
    let server = args.server.trim_end_matches('/');
    let contexts = apply_login(
        &mut config,
        server,
        ca.as_deref(),
        args.insecure_skip_tls_verify,
        &answer,
    );
    write_kubeconfig(&path, &config)?;
    println!(
        "Logged in to {server} as {} (token valid until {}).",
        answer.user, answer.expiration
    );
    println!("Contexts written to {}:", path.display());
    for context in &contexts {
        println!("   {context}");
    }
    println!("Switch with: kubectl config use-context CONTEXT");
    Ok(())
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    let path = kubeconfig_path(args.kubeconfig.as_deref())?;
    let mut config = read_kubeconfig(&path)?;
    let server = args.server.as_deref().map(|s| s.trim_end_matches('/'));
    let removed = remove_logins(&mut config, server);
    if removed.is_empty() {
        println!("No Visor login in {}.", path.display());
        return Ok(());
    }
    write_kubeconfig(&path, &config)?;
    println!("Logged out; removed contexts {}.", removed.join(", "));
    Ok(())
}

/// Links `DIR/kubectl-visor` to this executable, replacing an older link.
pub fn install_plugin(args: InstallPluginArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let dir = match args.dir {
        Some(dir) => dir,
        None => exe
            .parent()
            .context("this executable has no directory")?
            .to_path_buf(),
    };
    let link = dir.join(PLUGIN_NAME);
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?
        }
        Ok(_) => bail!(
            "{} exists and is not a link; remove it first",
            link.display()
        ),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&exe, &link)
        .with_context(|| format!("linking {} to {}", link.display(), exe.display()))?;
    println!("{} -> {}", link.display(), exe.display());
    println!(
        "`kubectl visor login` works when {} is on PATH.",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(namespaces: &[&str]) -> LoginAnswer {
        LoginAnswer {
            token: "t0ken".into(),
            user: "alice".into(),
            expiration: "2030-01-01T00:00:00Z".into(),
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn context_names(config: &Value) -> Vec<String> {
        config["contexts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn logins_replace_their_own_contexts_and_logout_removes_them() {
        let mut config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{ "name": "other", "cluster": { "server": "https://other:6443" } }],
            "users": [{ "name": "admin", "user": { "token": "x" } }],
            "contexts": [{ "name": "other", "context": { "cluster": "other", "user": "admin" } }],
            "current-context": "other",
        });
        let server = "https://127.0.0.1:6443";
        let names = apply_login(
            &mut config,
            server,
            Some(b"PEM"),
            false,
            &answer(&["team-a", "team-b"]),
        );
        assert_eq!(names, ["127.0.0.1-6443", "team-a", "team-b"]);
        assert_eq!(
            context_names(&config),
            ["other", "127.0.0.1-6443", "team-a", "team-b"]
        );
        assert_eq!(config["current-context"], "other");
        // A second login, having lost team-b, replaces the contexts.
        apply_login(
            &mut config,
            server,
            Some(b"PEM"),
            false,
            &answer(&["team-a"]),
        );
        assert_eq!(
            context_names(&config),
            ["other", "127.0.0.1-6443", "team-a"]
        );
        assert_eq!(config["users"].as_array().unwrap().len(), 2);
        let removed = remove_logins(&mut config, None);
        assert_eq!(removed, ["127.0.0.1-6443", "team-a"]);
        assert_eq!(context_names(&config), ["other"]);
        assert_eq!(config["users"].as_array().unwrap().len(), 1);
        assert_eq!(config["clusters"].as_array().unwrap().len(), 1);
    }
}
