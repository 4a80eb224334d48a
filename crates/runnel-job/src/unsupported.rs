//! What a job asks for that Runnel does not implement, named so the job can be refused before
//! anything runs (the first rule: never run a job without a part it depends on).
//!
//! The official runner refuses a job whose request it cannot honour before acknowledging it:
//! the reason goes to the job log, the job fails with `runner_system_failure` and exit code
//! [`UNSUPPORTED_EXIT_CODE`]. Runnel does the same for the payload parts it has no
//! implementation of: CI steps (`run`), job `inputs` and `secrets` (no provider is implemented).

use runnel_types::JobSpec;

/// The exit code the official runner reports for a job it refuses for unsupported options.
pub const UNSUPPORTED_EXIT_CODE: i32 = 3;

/// One line per part of `job` this runner cannot honour, each naming the feature; empty when
/// the job can run.
pub fn unsupported_features(job: &JobSpec) -> Vec<String> {
    let mut refusals = Vec::new();
    if !job.run.is_empty() {
        if job.steps.iter().any(|step| !step.script.is_empty()) {
            refusals.push("the `run` and `script` keywords cannot be used together".to_owned());
        }
        refusals.push(
            "this job uses the `run` keyword (CI steps), which Runnel does not support yet"
                .to_owned(),
        );
    }
    if !job.inputs.is_empty() {
        refusals.push(format!(
            "this job uses job inputs ({}), which Runnel does not support yet",
            job.inputs.join(", ")
        ));
    }
    for secret in &job.secrets {
        let providers = if secret.providers.is_empty() {
            "no provider".to_owned()
        } else {
            secret.providers.join(", ")
        };
        refusals.push(format!(
            "this job uses external secrets (`secrets:{}` from {providers}), which Runnel does not support yet",
            secret.variable
        ));
    }
    refusals
}

#[cfg(test)]
mod tests {
    use runnel_types::{SecretRequest, Step};

    use super::*;

    #[test]
    fn a_plain_job_runs() {
        assert!(unsupported_features(&JobSpec::default()).is_empty());
    }

    #[test]
    fn each_unsupported_part_is_named() {
        let job = JobSpec {
            run: r#"[{"name":"a","script":"true"}]"#.into(),
            steps: vec![Step {
                name: "script".into(),
                script: vec!["make".into()],
                ..Step::default()
            }],
            inputs: vec!["env".into(), "region".into()],
            secrets: vec![SecretRequest {
                variable: "DB".into(),
                providers: vec!["vault".into()],
            }],
            ..JobSpec::default()
        };
        insta::assert_snapshot!(unsupported_features(&job).join("\n"), @r"
        the `run` and `script` keywords cannot be used together
        this job uses the `run` keyword (CI steps), which Runnel does not support yet
        this job uses job inputs (env, region), which Runnel does not support yet
        this job uses external secrets (`secrets:DB` from vault), which Runnel does not support yet
        ");
    }
}
