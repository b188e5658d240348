//! `visor bench auth`: what authentication and authorisation add to each request — a login
//! token checked (signature cached after its first use, user and groups looked up) plus the
//! RBAC decision with 10,000 RoleBindings loaded — and what a token's first signature check
//! costs. In-process: no server, no network, only the code on the request path.

use clap::Args;

use super::report::Report;

#[derive(Debug, Args)]
pub struct AuthArgs {
    /// RoleBindings loaded into the authorizer.
    #[arg(long, default_value_t = 10_000)]
    pub bindings: usize,
    /// Requests timed.
    #[arg(long, default_value_t = 20_000)]
    pub iterations: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: AuthArgs) -> anyhow::Result<()> {
    let AuthArgs {
        bindings,
        iterations,
        json,
    } = args;
    anyhow::ensure!(iterations > 0, "--iterations must be positive");
    let figures = tokio::task::spawn_blocking(move || {
        visor_apiserver::auth::bench_authenticate(bindings, iterations)
    })
    .await??;
    let micros = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    let mut report = Report::new("auth", json);
    report.figure(
        format!("authentication + authorization per request, p50 ({bindings} RoleBindings)"),
        "request_p50",
        micros(figures.request_p50),
        "µs",
    );
    report.figure(
        "authentication + authorization per request, p99",
        "request_p99",
        micros(figures.request_p99),
        "µs",
    );
    report.figure(
        "first check of a token (ES256 signature), p50",
        "first_verify_p50",
        micros(figures.first_verify_p50),
        "µs",
    );
    report.print(&mut std::io::stdout())?;
    Ok(())
}
