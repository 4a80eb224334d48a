//! Kubernetes executor overhead: the `docker` scenario's trivial job (`true`, GIT_STRATEGY
//! none, busybox image) with `executor = "kubernetes"` against `runnel-fake-kube`, the test API
//! server that runs each pod as containers on the local Docker Engine; from enqueue to the fake
//! accepting its `success`, in attach mode (the default) and in exec mode
//! (`FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY`).
//!
//! A pod is a build and a helper container (Runnel's own helper image, as the `docker` scenario
//! builds it), created, polled until running (`poll_interval = 1`, the smallest the key takes),
//! run and deleted through the API server, so the floor it stands on is the Docker Engine's:
//! `kubernetes_floor_run_ms` is `docker run --rm <image> true` with the docker CLI, measured
//! right before each job, and `kubernetes_trivial_ratio` is the attach-mode job's time over it.

use runnel_fake_gitlab::{FakeConfig, FakeGitlab, JobBuilder, RemoteStatus};
use runnel_fake_kube::FakeKube;
use tokio::time::Instant;

use super::docker::{IMAGE, docker_cli, ensure_helper, ensure_image};
use super::{
    JOB_TIMEOUT, LONG_POLL, Plan, Session, enqueued_at, millis, scenario_dir, status_at,
    trivial_job,
};
use crate::error::BenchError;
use crate::report::Report;
use crate::runner::RunnerProcess;

/// The variable that selects exec mode.
const LEGACY: &str = "FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY";

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    ensure_image().await?;
    let helper = ensure_helper(&plan.runnel).await?;
    let kube = FakeKube::start(runnel_fake_kube::FakeConfig::default())
        .await
        .map_err(|error| BenchError::Tool {
            command: "runnel-fake-kube".to_owned(),
            problem: format!("cannot start: {error}"),
        })?;
    let result = match start_session(plan, &kube, &helper).await {
        Ok(mut session) => {
            let result = measure(plan, report, &mut session).await;
            session.stop(crate::runner::Stop::Graceful).await;
            result
        }
        Err(error) => Err(error),
    };
    kube.shutdown().await;
    result
}

async fn measure(
    plan: &Plan,
    report: &mut Report,
    session: &mut Session,
) -> Result<(), BenchError> {
    for _ in 0..plan.repetitions {
        let start = Instant::now();
        docker_cli(&["run", "--rm", "--network", "none", IMAGE, "true"]).await?;
        let floor = millis(start.elapsed());
        report.record("kubernetes_floor_run_ms", floor);
        let attach = one_job(session, trivial_job()).await?;
        report.record("kubernetes_trivial_ms", attach);
        if floor > 0.0 {
            report.record("kubernetes_trivial_ratio", attach / floor);
        }
        let exec = one_job(session, trivial_job().variable(LEGACY, "true")).await?;
        report.record("kubernetes_exec_trivial_ms", exec);
    }
    Ok(())
}

/// Enqueues `job` on an idle runner; milliseconds from enqueue to its accepted `success`.
async fn one_job(session: &mut Session, job: JobBuilder) -> Result<f64, BenchError> {
    session.wait_for_held_poll().await?;
    let id = session.fake.enqueue(job);
    let view = session.wait_success(id, JOB_TIMEOUT).await?;
    let done = status_at(&view, RemoteStatus::Success)
        .ok_or_else(|| BenchError::Missing(format!("job {id} has no success entry")))?;
    Ok(millis(done.saturating_sub(enqueued_at(&view)?)))
}

/// A fake with long polling and a kubernetes runner on `kube`, idle and polling.
async fn start_session(plan: &Plan, kube: &FakeKube, helper: &str) -> Result<Session, BenchError> {
    let dir = scenario_dir()?;
    let fake = FakeGitlab::start(FakeConfig {
        long_poll: LONG_POLL,
        ..FakeConfig::default()
    })
    .await
    .map_err(BenchError::fake("starting"))?;
    let text = format!(
        "concurrent = 1\n\
         check_interval = 3\n\
         shutdown_timeout = 30\n\
         \n\
         [[runners]]\n\
         \x20 name = \"bench-kubernetes\"\n\
         \x20 url = \"{url}\"\n\
         \x20 token = \"{token}\"\n\
         \x20 executor = \"kubernetes\"\n\
         \x20 [runners.kubernetes]\n\
         \x20   host = \"{host}\"\n\
         \x20   bearer_token = \"{bearer}\"\n\
         \x20   namespace = \"default\"\n\
         \x20   image = \"{IMAGE}\"\n\
         \x20   helper_image = \"{helper}\"\n\
         \x20   poll_interval = 1\n",
        url = fake.url(),
        token = fake.create_runner_token(),
        host = kube.url(),
        bearer = kube.token(),
    );
    let mut runner = RunnerProcess::start_with_config(&plan.runnel, &text, dir.path()).await?;
    super::wait_for_first_poll(&fake, &mut runner, "the kubernetes runner").await?;
    let session = Session {
        fake,
        runner,
        _dir: dir,
    };
    session.wait_for_held_poll().await?;
    Ok(session)
}
