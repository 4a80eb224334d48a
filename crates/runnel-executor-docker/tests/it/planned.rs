//! A job planned by `runnel-job` for the docker executor, run stage by stage in bash images:
//! the generated scripts, the directories and the helper/build split work together.

use std::path::Path;
use std::time::Duration;

use runnel_executor::{OutputStream, PrepareContext, Provider, Shell, StageCommand, StageExit};
use runnel_executor_docker::{DockerProvider, DockerSettings, HELPER_RUNNER_COMMAND};
use runnel_job::{ExecutorKind, JobStatus, PlanOptions, StageWhen, plan};
use runnel_types::{Step, Variable};
use tokio_util::sync::CancellationToken;

use crate::images::{self, BASH, HELPER_BASH};
use crate::support::{Collect, docker, docker_config, job};

const STEP_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn a_planned_job_runs_its_stages_in_the_right_containers() {
    let docker = docker().await;
    images::ensure(&docker).await;
    let settings = DockerSettings {
        short_token: "pLaN5678".to_owned(),
        token: format!("glrt-{}", "pLaN5678").into(),
        system_id: "s_0123456789ab".to_owned(),
        runner_id: 1,
        gitlab_url: "https://gitlab.example.com".to_owned(),
        shell: Shell::Bash,
        helper_image: HELPER_BASH.to_owned(),
        helper_binary: None,
    };
    let provider = DockerProvider::new(
        settings,
        &docker_config("pull_policy = \"never\"\ndisable_cache = true"),
    )
    .expect("provider");

    let mut job = job(Some(BASH));
    job.info.name = "build-job".to_owned();
    job.variables.push(Variable {
        key: "MY_VAR".to_owned(),
        value: "it's docker".to_owned(),
        public: true,
        ..Variable::default()
    });
    job.variables.push(Variable {
        key: "GIT_STRATEGY".to_owned(),
        value: "none".to_owned(),
        public: true,
        ..Variable::default()
    });
    job.steps.push(Step {
        name: "script".to_owned(),
        script: vec![
            "echo \"hello from $MY_VAR in $(pwd)\"".to_owned(),
            "echo \"bash $BASH_VERSION\" | cut -c1-6".to_owned(),
            "false".to_owned(),
            "echo not-reached".to_owned(),
        ],
        ..Step::default()
    });
    let options = PlanOptions {
        executor: ExecutorKind::Docker,
        builds_dir: "/builds".to_owned(),
        cache_dir: "/cache".to_owned(),
        runner_command: HELPER_RUNNER_COMMAND.to_owned(),
        short_token: "pLaN5678".to_owned(),
        ..PlanOptions::default()
    };
    let plan = plan(&job, &options).expect("plan");

    let mut executor = provider.create().expect("executor");
    let ctx = PrepareContext {
        job: &job,
        builds_dir: Path::new("/builds"),
        cache_dir: Path::new("/cache"),
        debug_services: false,
        project_slot: 0,
        git_fetch: false,
        network_per_build: false,
        predefined_housekeeping_only: false,
        init_process: false,
        temp_dir: None,
    };
    tokio::time::timeout(STEP_TIMEOUT, executor.prepare(&ctx))
        .await
        .expect("prepare hung")
        .expect("prepare");

    let mut status = JobStatus::Success;
    let mut outputs = Vec::new();
    for stage in &plan.stages {
        let runs = match stage.when {
            StageWhen::Always => true,
            StageWhen::OnSuccess => status == JobStatus::Success,
            StageWhen::OnFailure => status != JobStatus::Success,
        };
        if !runs {
            continue;
        }
        let kind = match stage.kind {
            runnel_job::StageKind::Predefined => runnel_executor::StageKind::Predefined,
            runnel_job::StageKind::Build => runnel_executor::StageKind::Build,
        };
        let sink = Collect::new();
        let cmd = StageCommand {
            stage: &stage.name,
            script: stage.script(status),
            inline: None,
            kind,
            env: &[],
            deadline: None,
        };
        let exit = tokio::time::timeout(
            STEP_TIMEOUT,
            executor.run(cmd, sink.as_ref(), CancellationToken::new()),
        )
        .await
        .expect("stage hung")
        .expect("stage ran");
        if !exit.success() && !stage.ignore_errors {
            status = JobStatus::Failed;
        }
        outputs.push((
            stage.name.clone(),
            exit,
            sink.text(OutputStream::Stdout),
            sink.text(OutputStream::Stderr),
        ));
    }
    executor.cleanup().await;

    let step = outputs
        .iter()
        .find(|(name, ..)| name == "step_script")
        .unwrap_or_else(|| panic!("no step_script ran: {outputs:#?}"));
    assert_eq!(step.1, StageExit::Exited(1), "{outputs:#?}");
    assert!(
        step.2.contains(&format!(
            "hello from it's docker in /builds/project-{}\n",
            job.info.project_id
        )),
        "{outputs:#?}"
    );
    assert!(
        step.2.contains("bash 5"),
        "the build image's bash ran the script: {outputs:#?}"
    );
    assert!(!step.2.contains("not-reached"), "{outputs:#?}");
    let prepare = outputs.first().expect("stages ran");
    assert_eq!(prepare.1, StageExit::Exited(0), "{outputs:#?}");
    assert_eq!(status, JobStatus::Failed);
}
