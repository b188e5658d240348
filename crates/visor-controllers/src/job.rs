//! The Job controller: runs a Job's pods until enough of them succeed, or until too many fail.
//!
//! Flow, for each Job that has not finished:
//! 1. list the pods that match its selector and name it as controller, and count them:
//!    active (neither finished nor being deleted), succeeded (phase `Succeeded`), failed (phase
//!    `Failed`), ready (condition `Ready` true);
//! 2. decide the Job's fate, in this order:
//!    - more failures than `backoffLimit` → `FailureTarget` and `Failed` with reason
//!      `BackoffLimitExceeded`;
//!    - running longer than `activeDeadlineSeconds` → `Failed` with reason `DeadlineExceeded`;
//!    - enough successes (`completions` of them, or, without `completions`, any success once
//!      nothing is active) → `SuccessCriteriaMet` and `Complete`, and `completionTime`;
//!    - otherwise keep `min(parallelism, completions - succeeded)` pods active, creating them
//!      from the template (`generateName` `<job>-`, the template's labels, which the server's
//!      defaulting gives `job-name` and `controller-uid`) or deleting the surplus;
//! 3. a finished Job's active pods are deleted; a suspended Job's too;
//! 4. write the status: `startTime` (first pass that runs pods), `active`, `ready`,
//!    `succeeded`, `failed`, conditions, `completionTime`.
//!
//! Guarantees: the reconciler is idempotent; once `Complete` or `Failed` is set the Job is
//! never run again. Events: `SuccessfulCreate`, `SuccessfulDelete`, `Completed`,
//! `BackoffLimitExceeded`, `DeadlineExceeded`.
//!
//! Caveats: counts are taken from the pods that exist, not tracked with finalizers as upstream
//! does, so deleting a finished pod of a running Job loses it from the counts. Failed pods are
//! replaced at once, without upstream's exponential back-off delay. `Indexed` completion mode
//! and pod failure policies are not implemented: such Jobs run as `NonIndexed` ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::ERROR_REQUEUE;
use crate::informers::Informers;
use crate::shared::{self, Context};

/// The most pods one pass creates or deletes.
const BURST: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing the pods of job {namespace}/{name}: {source}")]
    ListPods {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("creating a pod for job {namespace}/{name}: {source}")]
    CreatePod {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("deleting pod {namespace}/{pod}: {source}")]
    DeletePod {
        namespace: String,
        pod: String,
        source: kube::Error,
    },
    #[error("writing the status of job {namespace}/{name}: {source}")]
    Status {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Runs the controller until its watches end.
pub async fn run(client: Client, informers: Arc<Informers>) {
    let ctx = Context::new(client.clone());
    Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns_shared_stream(informers.touched(Api::<Pod>::all(client), watcher::Config::default()))
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "job reconcile");
            }
        })
        .await;
}

fn error_policy(_: Arc<Job>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "job reconcile failed; retrying");
    Action::requeue(ERROR_REQUEUE)
}

/// Whether a Job carries the condition `type_` with status `True`.
pub fn has_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// A Job that has finished, one way or the other.
pub fn finished(job: &Job) -> bool {
    has_condition(job, "Complete") || has_condition(job, "Failed")
}

/// What the pods say.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    active: i32,
    ready: i32,
    succeeded: i32,
    failed: i32,
}

/// What becomes of the Job in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Keep this many pods active.
    Run(i32),
    /// Suspended: no pods.
    Suspended,
    Complete,
    Failed {
        reason: &'static str,
        message: String,
    },
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some((name, namespace, uid)) = shared::identity(job.as_ref()) else {
        return Ok(Action::await_change());
    };
    let Some(spec) = job.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let selector = shared::selector(spec.selector.as_ref());
    let selector = match (
        job.metadata.deletion_timestamp.is_some(),
        finished(&job),
        selector,
    ) {
        // Being deleted: its pods are the garbage collector's.
        (true, _, _) => return Ok(Action::await_change()),
        // Finished Jobs are settled for good.
        (false, true, _) => return Ok(Action::await_change()),
        (false, false, None) => return Ok(Action::await_change()),
        (false, false, Some(selector)) => selector,
    };
    let pods: Vec<Pod> = shared::owned(&ctx.client, &namespace, &selector, &uid)
        .await
        .map_err(|source| Error::ListPods {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
    let counts = count(&pods);
    let now = Timestamp::now();
    let suspended = spec.suspend == Some(true);
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
        .or((!suspended).then_some(now));
    let verdict = verdict(&job, counts, start, now);

    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let active: Vec<&Pod> = pods.iter().filter(|p| shared::pod_active(p)).collect();
    let keep = match &verdict {
        Verdict::Run(n) => *n,
        Verdict::Suspended | Verdict::Complete | Verdict::Failed { .. } => 0,
    };
    let active_count = i32::try_from(active.len()).unwrap_or(i32::MAX);
    let mut created = 0;
    let mut deleted = 0;
    match active_count.cmp(&keep) {
        std::cmp::Ordering::Equal => {}
        std::cmp::Ordering::Less => {
            let (Some(owner), template) = (shared::controller_ref(job.as_ref()), &spec.template)
            else {
                return Ok(Action::await_change());
            };
            let pod = shared::pod_from_template(template, owner, &name, true, BTreeMap::new());
            for _ in 0..(keep - active_count).min(BURST) {
                match api.create(&PostParams::default(), &pod).await {
                    Ok(made) => {
                        created += 1;
                        ctx.event(
                            job.as_ref(),
                            false,
                            "SuccessfulCreate",
                            format!("Created pod: {}", made.name_any()),
                        )
                        .await;
                    }
                    Err(e) if shared::namespace_terminating(&e) => break,
                    Err(source) => {
                        return Err(Error::CreatePod {
                            namespace,
                            name,
                            source,
                        });
                    }
                }
            }
        }
        std::cmp::Ordering::Greater => {
            // Surplus pods: the ones not yet running go first.
            let mut surplus = active.clone();
            surplus.sort_by_key(|p| (shared::phase(p) == "Running", shared::pod_ready(p)));
            let excess = usize::try_from(active_count - keep).unwrap_or(0);
            for pod in surplus.into_iter().take(excess) {
                let pod_name = pod.name_any();
                shared::delete_idempotent(&api, &pod_name)
                    .await
                    .map_err(|source| Error::DeletePod {
                        namespace: namespace.clone(),
                        pod: pod_name.clone(),
                        source,
                    })?;
                deleted += 1;
                ctx.event(
                    job.as_ref(),
                    false,
                    "SuccessfulDelete",
                    format!("Deleted pod: {pod_name}"),
                )
                .await;
            }
        }
    }

    let status = status(&job, counts, start, created - deleted, &verdict);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    shared::write_status(&jobs, &name, job.status.as_ref(), &status)
        .await
        .map_err(|source| Error::Status {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
    match &verdict {
        Verdict::Complete => {
            ctx.event(job.as_ref(), false, "Completed", "Job completed".into())
                .await;
            Ok(Action::await_change())
        }
        Verdict::Failed { reason, message } => {
            ctx.event(job.as_ref(), true, reason, message.clone()).await;
            Ok(Action::await_change())
        }
        Verdict::Suspended => Ok(Action::await_change()),
        // A running Job with a deadline must be looked at when the deadline passes.
        Verdict::Run(_) => Ok(match (spec.active_deadline_seconds, start) {
            (Some(seconds), Some(start)) => {
                let left = (start + SignedDuration::from_secs(seconds)).duration_since(now);
                Action::requeue(
                    Duration::try_from(left)
                        .unwrap_or(Duration::ZERO)
                        .max(Duration::from_millis(100)),
                )
            }
            _ => Action::await_change(),
        }),
    }
}

fn count(pods: &[Pod]) -> Counts {
    let mut counts = Counts::default();
    for pod in pods {
        match (
            shared::phase(pod),
            pod.metadata.deletion_timestamp.is_some(),
        ) {
            ("Succeeded", _) => counts.succeeded += 1,
            ("Failed", _) => counts.failed += 1,
            // Being deleted and not finished: neither active nor counted yet.
            (_, true) => {}
            (_, false) => {
                counts.active += 1;
                if shared::pod_ready(pod) {
                    counts.ready += 1;
                }
            }
        }
    }
    counts
}

fn verdict(job: &Job, counts: Counts, start: Option<Timestamp>, now: Timestamp) -> Verdict {
    let Some(spec) = job.spec.as_ref() else {
        return Verdict::Suspended;
    };
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let deadline_passed = match (spec.active_deadline_seconds, start) {
        (Some(seconds), Some(start)) => start + SignedDuration::from_secs(seconds) <= now,
        _ => false,
    };
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let done = match spec.completions {
        Some(completions) => counts.succeeded >= completions,
        // A work queue: done when some pod succeeded and none is still working.
        None => counts.succeeded > 0 && counts.active == 0,
    };
    if counts.failed > backoff_limit {
        return Verdict::Failed {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit".into(),
        };
    }
    if deadline_passed {
        return Verdict::Failed {
            reason: "DeadlineExceeded",
            message: "Job was active longer than specified deadline".into(),
        };
    }
    if done {
        return Verdict::Complete;
    }
    if spec.suspend == Some(true) {
        return Verdict::Suspended;
    }
    match spec.completions {
        Some(completions) => Verdict::Run(parallelism.min(completions - counts.succeeded)),
        // After one success in a work queue no new pods start; the running ones finish.
        None if counts.succeeded > 0 => Verdict::Run(counts.active.min(parallelism)),
        None => Verdict::Run(parallelism),
    }
}

fn status(
    job: &Job,
    counts: Counts,
    start: Option<Timestamp>,
    active_change: i32,
    verdict: &Verdict,
) -> JobStatus {
    let previous = job.status.clone().unwrap_or_default();
    let mut conditions = previous.conditions.clone().unwrap_or_default();
    let finished_now = matches!(verdict, Verdict::Complete | Verdict::Failed { .. });
    match verdict {
        Verdict::Complete => {
            set_condition(
                &mut conditions,
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            set_condition(
                &mut conditions,
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
        }
        Verdict::Failed { reason, message } => {
            set_condition(&mut conditions, "FailureTarget", reason, message);
            set_condition(&mut conditions, "Failed", reason, message);
        }
        Verdict::Suspended => {
            set_condition(
                &mut conditions,
                "Suspended",
                "JobSuspended",
                "Job suspended",
            );
        }
        Verdict::Run(_) => {
            // Resumed: the Suspended condition turns false.
            if let Some(c) = conditions
                .iter_mut()
                .find(|c| c.type_ == "Suspended" && c.status == "True")
            {
                c.status = "False".into();
                c.reason = Some("JobResumed".into());
                c.message = Some("Job resumed".into());
                c.last_transition_time = Some(shared::now());
                c.last_probe_time = Some(shared::now());
            }
        }
    }
    let active = if finished_now {
        0
    } else {
        (counts.active + active_change).max(0)
    };
    let non_zero = |n: i32| (n > 0).then_some(n);
    JobStatus {
        start_time: start.map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        completion_time: match verdict {
            Verdict::Complete => previous.completion_time.or_else(|| Some(shared::now())),
            Verdict::Run(_) | Verdict::Suspended | Verdict::Failed { .. } => None,
        },
        active: non_zero(active),
        ready: Some(if finished_now { 0 } else { counts.ready }),
        succeeded: non_zero(counts.succeeded),
        failed: non_zero(counts.failed),
        terminating: Some(0),
        conditions: (!conditions.is_empty()).then_some(conditions),
        uncounted_terminated_pods: Some(Default::default()),
        ..previous
    }
}

fn set_condition(conditions: &mut Vec<JobCondition>, type_: &str, reason: &str, message: &str) {
    let now = shared::now();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == "True" => {}
        Some(c) => {
            c.status = "True".into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
            c.last_probe_time = Some(now.clone());
            c.last_transition_time = Some(now);
        }
        None => conditions.push(JobCondition {
            type_: type_.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_probe_time: Some(now.clone()),
            last_transition_time: Some(now),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(spec: serde_json::Value) -> Job {
        serde_json::from_value(json!({ "metadata": { "name": "j" }, "spec": spec }))
            .unwrap_or_default()
    }

    fn counts(active: i32, succeeded: i32, failed: i32) -> Counts {
        Counts {
            active,
            ready: 0,
            succeeded,
            failed,
        }
    }

    #[test]
    fn runs_parallelism_pods_until_completions() {
        let j = job(json!({ "completions": 3, "parallelism": 2, "template": {} }));
        let now = Timestamp::now();
        assert_eq!(verdict(&j, counts(0, 0, 0), None, now), Verdict::Run(2));
        assert_eq!(verdict(&j, counts(1, 2, 0), None, now), Verdict::Run(1));
        assert_eq!(verdict(&j, counts(0, 3, 0), None, now), Verdict::Complete);
    }

    #[test]
    fn too_many_failures_fail_the_job() {
        let j = job(json!({ "backoffLimit": 1, "template": {} }));
        let now = Timestamp::now();
        assert_eq!(verdict(&j, counts(1, 0, 1), None, now), Verdict::Run(1));
        assert!(matches!(
            verdict(&j, counts(0, 0, 2), None, now),
            Verdict::Failed {
                reason: "BackoffLimitExceeded",
                ..
            }
        ));
    }

    #[test]
    fn deadline_fails_the_job() {
        let j = job(json!({ "activeDeadlineSeconds": 5, "template": {} }));
        let now = Timestamp::now();
        let start = now - SignedDuration::from_secs(6);
        assert!(matches!(
            verdict(&j, counts(1, 0, 0), Some(start), now),
            Verdict::Failed {
                reason: "DeadlineExceeded",
                ..
            }
        ));
    }

    #[test]
    fn work_queue_completes_when_all_are_done() {
        let j = job(json!({ "parallelism": 2, "template": {} }));
        let now = Timestamp::now();
        assert_eq!(verdict(&j, counts(1, 1, 0), None, now), Verdict::Run(1));
        assert_eq!(verdict(&j, counts(0, 1, 0), None, now), Verdict::Complete);
    }
}
