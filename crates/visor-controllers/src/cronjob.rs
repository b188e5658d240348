//! The CronJob controller: creates a Job from a CronJob's template at each time its schedule
//! names, and keeps a bounded history of finished Jobs.
//!
//! Flow, for each CronJob:
//! 1. list the Jobs in its namespace that name it as controller; the unfinished ones are its
//!    `status.active`; a Job that was active and has finished is reported (`SawCompletedJob`)
//!    and, if it succeeded, moves `status.lastSuccessfulTime`;
//! 2. delete the oldest finished Jobs beyond `successfulJobsHistoryLimit` and
//!    `failedJobsHistoryLimit` (in the background, so the garbage collector takes their pods);
//! 3. unless suspended, find the most recent time the schedule names that is later than
//!    `status.lastScheduleTime` (or the CronJob's creation) and not in the future. If there is
//!    one, and it is not older than `startingDeadlineSeconds`, then by `concurrencyPolicy`:
//!    `Allow` creates the Job; `Forbid` skips while a Job is active; `Replace` deletes the active
//!    Jobs first. The Job is named `<cronjob>-<scheduled time in minutes since the epoch>`, so
//!    a pass that is repeated cannot create a second Job for the same time;
//! 4. write the status and look again when the schedule next fires.
//!
//! Schedules are standard five-field cron expressions (and `@hourly`-style nicknames),
//! evaluated in `spec.timeZone` when it is set and in UTC otherwise, like upstream's controller
//! manager running in UTC.
//!
//! Guarantees: at most one Job per scheduled time; missed times are not made up one by one
//! (only the most recent missed time runs, as upstream). The reconciler is idempotent.
//!
//! Caveats: an unparseable schedule or unknown time zone is reported as a warning event and
//! the CronJob waits for a change.

use std::sync::Arc;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::ERROR_REQUEUE;
use crate::job;
use crate::shared::{self, Context};

/// The annotation a Job created by a CronJob carries: when it was scheduled for.
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing the jobs of cronjob {namespace}/{name}: {source}")]
    ListJobs {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("creating job {namespace}/{job}: {source}")]
    CreateJob {
        namespace: String,
        job: String,
        source: kube::Error,
    },
    #[error("deleting job {namespace}/{job}: {source}")]
    DeleteJob {
        namespace: String,
        job: String,
        source: kube::Error,
    },
    #[error("writing the status of cronjob {namespace}/{name}: {source}")]
    Status {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Why a schedule cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("unparseable schedule {schedule:?}: {source}")]
    Parse {
        schedule: String,
        source: croner::errors::CronError,
    },
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    #[error("no time matches the schedule: {0}")]
    Evaluate(croner::errors::CronError),
}

/// A parsed schedule and the zone it is read in.
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

impl Schedule {
    /// Parses a five-field schedule (a `CRON_TZ=` or `TZ=` prefix names its zone) read in
    /// `time_zone`, or UTC.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let (prefix_zone, expression) = match schedule.trim().split_once(' ') {
            Some((first, rest)) if first.starts_with("CRON_TZ=") || first.starts_with("TZ=") => {
                (first.split_once('=').map(|(_, z)| z), rest)
            }
            _ => (None, schedule),
        };
        let zone = match time_zone.or(prefix_zone) {
            None => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| ScheduleError::TimeZone(name.to_string()))?
            }
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|source| ScheduleError::Parse {
                schedule: schedule.to_string(),
                source,
            })?;
        Ok(Schedule { cron, zone })
    }

    /// The latest scheduled time in `(after, now]`, if any.
    pub fn most_recent(
        &self,
        after: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, ScheduleError> {
        let previous = self
            .cron
            .find_previous_occurrence(&now.to_zoned(self.zone.clone()), true)
            .map_err(ScheduleError::Evaluate)?
            .timestamp();
        Ok((previous > after).then_some(previous))
    }

    /// The first scheduled time after `now`.
    pub fn next(&self, now: Timestamp) -> Result<Timestamp, ScheduleError> {
        Ok(self
            .cron
            .find_next_occurrence(&now.to_zoned(self.zone.clone()), false)
            .map_err(ScheduleError::Evaluate)?
            .timestamp())
    }
}

/// Runs the controller until its watches end.
pub async fn run(client: Client) {
    let ctx = Context::new(client.clone());
    Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), watcher::Config::default())
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "cronjob reconcile");
        }
    })
    .await;
}

fn error_policy(_: Arc<CronJob>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "cronjob reconcile failed; retrying");
    Action::requeue(ERROR_REQUEUE)
}

/// What the schedule asks of this pass.
enum Due {
    /// Nothing is due (the requeue below waits for the next time).
    NotYet,
    /// `at` is due but too late to start (past `startingDeadlineSeconds`).
    Missed { at: Timestamp },
    /// `at` is due.
    Now { at: Timestamp },
}

async fn reconcile(cronjob: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some((name, namespace, uid)) = shared::identity(cronjob.as_ref()) else {
        return Ok(Action::await_change());
    };
    let Some(spec) = cronjob.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if cronjob.metadata.deletion_timestamp.is_some() {
        // Its Jobs are the garbage collector's now.
        return Ok(Action::await_change());
    }
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::ListJobs {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?
        .items
        .into_iter()
        .filter(|j| shared::controlled_by(&j.metadata, &uid))
        .collect();

    let previous = cronjob.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    let was_active: Vec<String> = previous
        .active
        .iter()
        .flatten()
        .filter_map(|r| r.uid.clone())
        .collect();
    for j in jobs.iter().filter(|j| job::finished(j)) {
        if j.metadata
            .uid
            .as_ref()
            .is_some_and(|u| was_active.contains(u))
        {
            ctx.event(
                cronjob.as_ref(),
                false,
                "SawCompletedJob",
                format!(
                    "Saw completed job: {}, condition: {}",
                    j.name_any(),
                    if job::has_condition(j, "Complete") {
                        "Complete"
                    } else {
                        "Failed"
                    }
                ),
            )
            .await;
        }
        if job::has_condition(j, "Complete") {
            let done = j.status.as_ref().and_then(|s| s.completion_time.clone());
            if done.as_ref().map(|t| t.0) > status.last_successful_time.as_ref().map(|t| t.0) {
                status.last_successful_time = done;
            }
        }
    }
    let mut active: Vec<&Job> = jobs.iter().filter(|j| !job::finished(j)).collect();
    active.sort_by_key(|j| j.name_any());
    status.active = Some(active.iter().map(|j| job_ref(j)).collect());

    cleanup(&ctx, &cronjob, &jobs_api, &jobs, &namespace).await?;

    let schedule = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(schedule) => schedule,
        Err(error) => {
            ctx.event(
                cronjob.as_ref(),
                true,
                "UnparseableSchedule",
                error.to_string(),
            )
            .await;
            write(&ctx, &namespace, &name, &previous, status).await?;
            return Ok(Action::await_change());
        }
    };
    let now = Timestamp::now();
    let earliest = previous
        .last_schedule_time
        .as_ref()
        .or(cronjob.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    let due = match (
        spec.suspend == Some(true),
        schedule.most_recent(earliest, now),
    ) {
        // Suspended: nothing runs; resuming re-evaluates from the last run.
        (true, _) => Due::NotYet,
        (false, Err(_)) => Due::NotYet,
        (false, Ok(None)) => Due::NotYet,
        (false, Ok(Some(at))) => match spec.starting_deadline_seconds {
            Some(seconds) if at + SignedDuration::from_secs(seconds) < now => Due::Missed { at },
            _ => Due::Now { at },
        },
    };
    match due {
        Due::NotYet => {}
        Due::Missed { at } => {
            ctx.event(
                cronjob.as_ref(),
                true,
                "MissSchedule",
                format!("Missed scheduled time to start a job: {}", at),
            )
            .await;
        }
        Due::Now { at } => {
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            match (policy, active.is_empty()) {
                // Forbid waits for the running Job; the missed time stays due.
                ("Forbid", false) => {
                    write(&ctx, &namespace, &name, &previous, status).await?;
                    return Ok(Action::requeue(until(schedule.next(now).ok(), now)));
                }
                ("Replace", false) => {
                    for j in &active {
                        let job_name = j.name_any();
                        shared::delete_idempotent(&jobs_api, &job_name)
                            .await
                            .map_err(|source| Error::DeleteJob {
                                namespace: namespace.clone(),
                                job: job_name.clone(),
                                source,
                            })?;
                        ctx.event(
                            cronjob.as_ref(),
                            false,
                            "SuccessfulDelete",
                            format!("Deleted job {job_name}"),
                        )
                        .await;
                    }
                    status.active = Some(Vec::new());
                }
                _ => {}
            }
            if let Some(made) = create_job(&ctx, &cronjob, &jobs_api, at).await? {
                status
                    .active
                    .get_or_insert_with(Vec::new)
                    .push(job_ref(&made));
            }
            status.last_schedule_time = Some(Time(at));
        }
    }
    write(&ctx, &namespace, &name, &previous, status).await?;
    match spec.suspend == Some(true) {
        true => Ok(Action::await_change()),
        false => Ok(Action::requeue(until(schedule.next(now).ok(), now))),
    }
}

/// How long until `next` (a little after, so the time has surely come), or a while if unknown.
fn until(next: Option<Timestamp>, now: Timestamp) -> Duration {
    match next {
        Some(next) => Duration::try_from(next.duration_since(now))
            .unwrap_or(Duration::ZERO)
            .saturating_add(Duration::from_millis(100)),
        None => Duration::from_secs(300),
    }
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        resource_version: j.metadata.resource_version.clone(),
        ..j.object_ref(&())
    }
}

async fn write(
    ctx: &Context,
    namespace: &str,
    name: &str,
    previous: &CronJobStatus,
    status: CronJobStatus,
) -> Result<(), Error> {
    let mut status = status;
    if status.active.as_ref().is_some_and(Vec::is_empty) {
        status.active = None;
    }
    // The resource version in the references changes with every Job update; comparing it
    // would make every Job status change a write here.
    let strip = |s: &CronJobStatus| {
        let mut s = s.clone();
        for r in s.active.iter_mut().flatten() {
            r.resource_version = None;
        }
        s
    };
    if strip(previous) == strip(&status) {
        return Ok(());
    }
    let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), namespace);
    shared::write_status(&api, name, Some(previous), &status)
        .await
        .map(|_| ())
        .map_err(|source| Error::Status {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })
}

async fn create_job(
    ctx: &Context,
    cronjob: &CronJob,
    api: &Api<Job>,
    at: Timestamp,
) -> Result<Option<Job>, Error> {
    let name = cronjob.name_any();
    let namespace = cronjob.namespace().unwrap_or_default();
    let Some(owner) = shared::controller_ref(cronjob) else {
        return Ok(None);
    };
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_AT.into(),
        at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    let job_name = format!("{name}-{}", at.as_second().div_euclid(60));
    let j = Job {
        metadata: ObjectMeta {
            name: Some(job_name.clone()),
            namespace: Some(namespace.clone()),
            labels: template_meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    };
    match shared::create_idempotent(api, &j).await {
        Ok(Some(made)) => {
            ctx.event(
                cronjob,
                false,
                "SuccessfulCreate",
                format!("Created job {job_name}"),
            )
            .await;
            Ok(Some(made))
        }
        // Made by an earlier pass whose status write was lost.
        Ok(None) => Ok(None),
        Err(e) if shared::namespace_terminating(&e) => Ok(None),
        Err(source) => {
            ctx.event(
                cronjob,
                true,
                "FailedCreate",
                format!("Error creating job: {source}"),
            )
            .await;
            Err(Error::CreateJob {
                namespace,
                job: job_name,
                source,
            })
        }
    }
}

/// Deletes the oldest finished Jobs beyond the history limits.
async fn cleanup(
    ctx: &Context,
    cronjob: &CronJob,
    api: &Api<Job>,
    jobs: &[Job],
    namespace: &str,
) -> Result<(), Error> {
    let spec = cronjob.spec.as_ref();
    let limits = [
        (
            "Complete",
            spec.and_then(|s| s.successful_jobs_history_limit)
                .unwrap_or(3),
        ),
        (
            "Failed",
            spec.and_then(|s| s.failed_jobs_history_limit).unwrap_or(1),
        ),
    ];
    for (condition, limit) in limits {
        let mut done: Vec<&Job> = jobs
            .iter()
            .filter(|j| job::has_condition(j, condition) && j.metadata.deletion_timestamp.is_none())
            .collect();
        done.sort_by_key(|j| {
            (
                j.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .map(|t| t.0),
                j.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        let surplus = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for j in done.into_iter().take(surplus) {
            let job_name = j.name_any();
            shared::delete_idempotent(api, &job_name)
                .await
                .map_err(|source| Error::DeleteJob {
                    namespace: namespace.into(),
                    job: job_name.clone(),
                    source,
                })?;
            ctx.event(
                cronjob,
                false,
                "SuccessfulDelete",
                format!("Deleted job {job_name}"),
            )
            .await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn every_minute() {
        let s = Schedule::parse("*/1 * * * *", None).expect("parses");
        let now = at("2025-03-01T10:20:30Z");
        assert_eq!(s.next(now).ok(), Some(at("2025-03-01T10:21:00Z")));
        assert_eq!(
            s.most_recent(at("2025-03-01T10:00:00Z"), now)
                .ok()
                .flatten(),
            Some(at("2025-03-01T10:20:00Z"))
        );
        // Already ran at that time: nothing is due.
        assert_eq!(
            s.most_recent(at("2025-03-01T10:20:00Z"), now)
                .ok()
                .flatten(),
            None
        );
    }

    #[test]
    fn nicknames_and_ranges() {
        let s = Schedule::parse("@hourly", None).expect("parses");
        assert_eq!(
            s.next(at("2025-03-01T10:20:30Z")).ok(),
            Some(at("2025-03-01T11:00:00Z"))
        );
        let s = Schedule::parse("0 9 * * 1-5", None).expect("parses");
        // 2025-03-01 is a Saturday: the next weekday 09:00 is Monday the 3rd.
        assert_eq!(
            s.next(at("2025-03-01T10:20:30Z")).ok(),
            Some(at("2025-03-03T09:00:00Z"))
        );
    }

    #[test]
    fn time_zones_are_honoured() {
        let s = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).expect("parses");
        // 09:00 in Berlin in winter is 08:00 UTC.
        assert_eq!(
            s.next(at("2025-01-10T00:00:00Z")).ok(),
            Some(at("2025-01-10T08:00:00Z"))
        );
        // And in summer, 07:00 UTC.
        assert_eq!(
            s.next(at("2025-07-10T00:00:00Z")).ok(),
            Some(at("2025-07-10T07:00:00Z"))
        );
        let s = Schedule::parse("CRON_TZ=America/New_York 0 9 * * *", None).expect("parses");
        assert_eq!(
            s.next(at("2025-01-10T00:00:00Z")).ok(),
            Some(at("2025-01-10T14:00:00Z"))
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(matches!(
            Schedule::parse("not a schedule", None),
            Err(ScheduleError::Parse { .. })
        ));
        assert!(matches!(
            Schedule::parse("* * * * * *", None),
            Err(ScheduleError::Parse { .. })
        ));
        assert!(matches!(
            Schedule::parse("* * * * *", Some("Mars/Olympus")),
            Err(ScheduleError::TimeZone(_))
        ));
    }
}
