//! Placement inside `visor server`: the scheduler, and the controllers that take the server's
//! placement settings (node lifecycle, zones, balancer). Each is an API client acting as a user
//! of its own, through the server's in-process transport: the scheduler as
//! `system:visor-scheduler`, the controllers as `system:visor-controller-manager`.
//!
//! The settings are `visor server` flags; each can also come from an environment variable
//! (`VISOR_HOST_FAILURE_GRACE`, …), which is how tests that start a server set them.

use std::time::Duration;

use visor_apiserver::RunningServer;
use visor_controllers::balancer::{self, Mode};
use visor_controllers::nodelifecycle;

use crate::controllers::{CONTROLLER_USER, in_process_client};

/// The identity the scheduler acts as.
const SCHEDULER_USER: &str = "system:visor-scheduler";

/// `visor server`'s placement flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PlacementArgs {
    /// How long pods stay on a host that stopped heartbeating (or reports NotReady) before
    /// they are deleted so that their controllers replace them on healthy hosts.
    #[arg(long, env = "VISOR_HOST_FAILURE_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub host_failure_grace: Duration,
    /// How long a host may go without renewing its lease before it is marked unreachable.
    #[arg(long, env = "VISOR_NODE_MONITOR_GRACE", default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace: Duration,
    /// What the balancer does when hosts drift apart: off, manual (recommend moves) or
    /// automatic (evict movable pods from the busiest hosts so they are placed again).
    #[arg(long, env = "VISOR_BALANCER", default_value = "manual", value_parser = parse_mode)]
    pub balancer: Mode,
    /// The largest tolerated spread between a zone's busiest and idlest host, in percentage
    /// points of utilisation.
    #[arg(long, env = "VISOR_BALANCER_THRESHOLD", default_value_t = 20, value_parser = clap::value_parser!(i64).range(0..=100))]
    pub balancer_threshold: i64,
    /// At most this many moves per zone per balancer interval.
    #[arg(long, env = "VISOR_BALANCER_RATE", default_value_t = 2)]
    pub balancer_rate: usize,
    /// How often the balancer looks.
    #[arg(long, env = "VISOR_BALANCER_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub balancer_interval: Duration,
}

impl Default for PlacementArgs {
    fn default() -> PlacementArgs {
        PlacementArgs {
            host_failure_grace: Duration::from_secs(30),
            node_monitor_grace: Duration::from_secs(40),
            balancer: Mode::Manual,
            balancer_threshold: 20,
            balancer_rate: 2,
            balancer_interval: Duration::from_secs(60),
        }
    }
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
}

/// A duration: `500ms`, `30s`, `2m`, `1h`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?} has an unknown unit (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || seconds > 1e9 {
        return Err(format!("{text:?} is too long"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Starts the scheduler and the placement controllers; they stop when the returned task is
/// aborted.
pub fn spawn(server: &RunningServer, args: &PlacementArgs) -> tokio::task::JoinHandle<()> {
    let scheduler = in_process_client(server, SCHEDULER_USER);
    let controllers = in_process_client(server, CONTROLLER_USER);
    let lifecycle = nodelifecycle::Config {
        monitor_grace: args.node_monitor_grace,
        host_failure_grace: args.host_failure_grace,
        // Look often enough that a short grace (tests) is honoured closely.
        tick: (args.node_monitor_grace.min(args.host_failure_grace) / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(1)),
    };
    let balancing = balancer::Config {
        mode: args.balancer,
        threshold_percent: args.balancer_threshold,
        rate: args.balancer_rate.max(1),
        interval: args.balancer_interval.max(Duration::from_millis(200)),
    };
    tracing::info!(
        host_failure_grace = ?args.host_failure_grace,
        node_monitor_grace = ?args.node_monitor_grace,
        balancer = args.balancer.name(),
        "starting the scheduler and the placement controllers"
    );
    tokio::spawn(async move {
        tokio::join!(
            visor_scheduler::runner::run(scheduler),
            visor_controllers::run_placement(controllers, lifecycle, balancing),
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
