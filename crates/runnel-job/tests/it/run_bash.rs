//! Generated scripts run by a real bash: quoting round-trips arbitrary bytes, and errexit stops
//! at the first failing command.

use runnel_types::Variable;

use crate::support::{job, opts, plan_ok, run_bash, script_step, stage_script};

const NASTY: &str = "quote' dq\" dollar$HOME back`tick` \\ \\n semi; pipe| amp& star* \
                     tab\t nl\nline2 unicode ✓ é 🙂 esc\x1b[31m bell\x07 cr\r end";

fn plan_in(dir: &std::path::Path, steps: Vec<runnel_types::Step>) -> runnel_job::JobPlan {
    let mut job = job();
    job.steps = steps;
    job.variables.push(Variable {
        raw: true,
        ..Variable::new("NASTY", NASTY)
    });
    job.variables.push(Variable {
        raw: true,
        file: true,
        ..Variable::new("NASTY_FILE", NASTY)
    });
    let mut opts = opts();
    opts.builds_dir = dir.join("builds").to_string_lossy().into_owned();
    opts.cache_dir = dir.join("cache").to_string_lossy().into_owned();
    plan_ok(&job, &opts)
}

#[test]
fn quoting_round_trips_arbitrary_bytes() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let steps = vec![script_step(&[
        "printf '%s' \"$NASTY\" > nasty.out",
        "cat \"$NASTY_FILE\" > nasty_file.out",
        "printf '%s' $'x\\ty' > ansi.out",
    ])];
    let plan = plan_in(tmp.path(), steps);
    for stage in ["prepare_script", "get_sources", "step_script"] {
        let (code, stdout, stderr) = run_bash(&stage_script(&plan, stage), tmp.path());
        assert_eq!(
            code, 0,
            "{stage} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        if stage == "step_script" {
            assert!(stdout.contains("\x1b[32;1m$ printf '%s' \"$NASTY\" > nasty.out\x1b[0;m"));
        }
    }
    let project = std::path::Path::new(&plan.dirs.project_dir);
    let read = |name: &str| std::fs::read(project.join(name)).expect("output file");
    assert_eq!(read("nasty.out"), NASTY.as_bytes());
    assert_eq!(read("nasty_file.out"), NASTY.as_bytes());
    assert_eq!(read("ansi.out"), b"x\ty");
}

#[test]
fn errexit_stops_at_the_first_failing_command() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let steps = vec![script_step(&[
        "echo before",
        "(exit 7)",
        "echo after > after.out",
    ])];
    let plan = plan_in(tmp.path(), steps);
    let (code, _, _) = run_bash(&stage_script(&plan, "get_sources"), tmp.path());
    assert_eq!(code, 0);
    let (code, stdout, _) = run_bash(&stage_script(&plan, "step_script"), tmp.path());
    assert_eq!(code, 7);
    assert!(stdout.contains("before"));
    assert!(
        !stdout.contains("$ echo after"),
        "nothing runs after the failure"
    );
    assert!(
        !std::path::Path::new(&plan.dirs.project_dir)
            .join("after.out")
            .exists()
    );
}

#[test]
fn gitlab_env_carries_variables_between_stages() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut steps = vec![script_step(&[
        "echo \"FROM_DOTENV=hello world\" >> \"$GITLAB_ENV\"",
    ])];
    steps.push(runnel_types::Step {
        name: "second".into(),
        ..script_step(&["printf '%s' \"$FROM_DOTENV\" > dotenv.out"])
    });
    let plan = plan_in(tmp.path(), steps);
    for stage in [
        "prepare_script",
        "get_sources",
        "step_script",
        "step_second",
    ] {
        let (code, stdout, stderr) = run_bash(&stage_script(&plan, stage), tmp.path());
        assert_eq!(code, 0, "{stage}\n{stdout}\n{stderr}");
    }
    let out =
        std::fs::read_to_string(std::path::Path::new(&plan.dirs.project_dir).join("dotenv.out"))
            .expect("dotenv output");
    assert_eq!(out, "hello world");
    let (code, _, _) = run_bash(&stage_script(&plan, "cleanup_file_variables"), tmp.path());
    assert_eq!(code, 0);
    let temp = std::path::Path::new(&plan.dirs.temp_dir);
    assert!(
        !temp.join("NASTY_FILE").exists(),
        "file variables are removed"
    );
    assert!(!temp.join("gitlab_runner_env").exists());
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .expect("git must be installed to run these tests");
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn clone_then_fetch_checks_out_the_job_commit() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let origin = tmp.path().join("origin");
    std::fs::create_dir(&origin).expect("origin dir");
    git(&origin, &["init", "-q", "-b", "main"]);
    std::fs::write(origin.join("README"), "first\n").expect("write");
    git(&origin, &["add", "README"]);
    git(&origin, &["commit", "-q", "-m", "first"]);
    let first = git(&origin, &["rev-parse", "HEAD"]);

    let mut job = job();
    job.git.repo_url = format!("file://{}", origin.display()).into();
    job.git.sha = first.clone();
    job.git.depth = 0;
    job.variables.retain(|v| v.key != "GIT_STRATEGY");
    let mut opts = opts();
    opts.builds_dir = tmp.path().join("builds").to_string_lossy().into_owned();
    opts.cache_dir = tmp.path().join("cache").to_string_lossy().into_owned();

    let plan = plan_ok(&job, &opts);
    let (code, stdout, stderr) = run_bash(&stage_script(&plan, "get_sources"), tmp.path());
    assert_eq!(code, 0, "clone failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("Created fresh repository."));
    let project = std::path::Path::new(&plan.dirs.project_dir);
    assert_eq!(
        std::fs::read_to_string(project.join("README")).expect("checkout"),
        "first\n"
    );
    std::fs::write(project.join("untracked.txt"), "x").expect("write");

    std::fs::write(origin.join("README"), "second\n").expect("write");
    git(&origin, &["commit", "-q", "-am", "second"]);
    job.git.sha = git(&origin, &["rev-parse", "HEAD"]);
    job.allow_git_fetch = true;
    let plan = plan_ok(&job, &opts);
    let (code, stdout, stderr) = run_bash(&stage_script(&plan, "get_sources"), tmp.path());
    assert_eq!(code, 0, "fetch failed\n{stdout}\n{stderr}");
    assert!(
        !stdout.contains("Created fresh repository."),
        "fetch reuses the checkout"
    );
    assert_eq!(
        std::fs::read_to_string(project.join("README")).expect("checkout"),
        "second\n"
    );
    assert!(
        !project.join("untracked.txt").exists(),
        "git clean removed untracked files"
    );
}

/// The directory and file steps skip their process when there is nothing to do, and still do
/// what `mkdir -p`, `touch` and `rm -f` did: create, keep contents, remove files and dangling
/// symlinks, and fail the stage when the path is in the way.
#[test]
fn guarded_file_steps_behave_like_the_commands() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let plan = plan_in(tmp.path(), vec![script_step(&["echo hi"])]);
    let temp_dir = std::path::Path::new(&plan.dirs.temp_dir);
    let env_file = temp_dir.join("gitlab_runner_env");
    let masking_db = temp_dir.join("masking.db");

    // get_sources creates both directories and an empty env file from nothing.
    let (code, _, stderr) = run_bash(&stage_script(&plan, "get_sources"), tmp.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(std::path::Path::new(&plan.dirs.project_dir).is_dir());
    assert_eq!(std::fs::read(&env_file).expect("env file"), b"");

    // A later stage keeps what earlier stages exported through $GITLAB_ENV.
    std::fs::write(&env_file, "FROM_ENV=kept\n").expect("write env file");
    let plan_echo = plan_in(tmp.path(), vec![script_step(&["echo \"env=$FROM_ENV\""])]);
    let (code, stdout, stderr) = run_bash(&stage_script(&plan_echo, "step_script"), tmp.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("env=kept"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&env_file).expect("env file"),
        "FROM_ENV=kept\n"
    );

    // Cleanup removes files and dangling symlinks, and is happy when they are already gone.
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &masking_db).expect("symlink");
    let (code, _, stderr) = run_bash(&stage_script(&plan, "cleanup_file_variables"), tmp.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(!env_file.exists());
    assert!(std::fs::symlink_metadata(&masking_db).is_err());
    let (code, _, stderr) = run_bash(&stage_script(&plan, "cleanup_file_variables"), tmp.path());
    assert_eq!(code, 0, "{stderr}");

    // A directory where a file should be removed fails the stage, as `rm -f` does.
    std::fs::create_dir_all(&env_file).expect("dir in the way");
    let (code, _, _) = run_bash(&stage_script(&plan, "prepare_script"), tmp.path());
    assert_ne!(code, 0);
}

/// `PlanOptions::stage_subshell`: the script the shell executor's session sources inside its
/// own subshell evaluates the body without a second subshell, with the same output, exit
/// status, `exit`/trap behaviour and isolation as the official script run by a shell of its own.
#[test]
fn a_stage_sourced_in_a_subshell_behaves_like_the_official_script() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let bodies: [&[&str]; 4] = [
        &[
            "export LEAK=1",
            "cd /",
            "trap 'echo bye' EXIT",
            "echo hi",
            "false",
            "echo never",
        ],
        &["echo one", "exit 7", "echo never"],
        &["set +e", "false", "echo after $?", "LEAK=2"],
        &[
            "trap 'echo term' TERM",
            "echo $BASH_SUBSHELL > /dev/null",
            "true",
        ],
    ];
    for lines in bodies {
        let plan = plan_in(tmp.path(), vec![script_step(lines)]);
        let official = run_bash(&stage_script(&plan, "step_script"), tmp.path());
        let mut job = job();
        job.steps = vec![script_step(lines)];
        let mut options = opts();
        options.builds_dir = tmp.path().join("builds").to_string_lossy().into_owned();
        options.cache_dir = tmp.path().join("cache").to_string_lossy().into_owned();
        options.stage_subshell = true;
        let plan = plan_ok(&job, &options);
        let script = stage_script(&plan, "step_script");
        assert!(
            !script.contains("(trap 'exit 1' TERM; eval"),
            "no second subshell: {script}"
        );
        let file = tmp.path().join("stage.sh");
        std::fs::write(&file, &script).expect("write the stage");
        // As the session runs it: sourced in a subshell with stdin from /dev/null, then the
        // shell goes on (and must see nothing of the stage).
        let session = format!(
            "( . '{}' ) </dev/null; echo \"status $?\" >&2; echo \"[${{LEAK-}}] $PWD\" >&2\n",
            file.display()
        );
        let (code, stdout, stderr) = run_bash(&session, tmp.path());
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stdout, official.1, "same output for {lines:?}");
        let expected = format!("status {}\n[] {}\n", official.0, tmp.path().display());
        assert!(
            stderr.ends_with(&expected),
            "same status, nothing leaks for {lines:?}: {stderr:?} (official {:?})",
            official.2
        );
    }
}

/// Options as the shell executor's runner sets them: stages sourced in the session's
/// subshell, and housekeeping run in the session's shell itself.
fn session_opts(dir: &std::path::Path) -> runnel_job::PlanOptions {
    let mut options = opts();
    options.builds_dir = dir.join("builds").to_string_lossy().into_owned();
    options.cache_dir = dir.join("cache").to_string_lossy().into_owned();
    options.stage_subshell = true;
    options.inline_housekeeping = true;
    options
}

/// What a shell's state looks like to later stages: options, traps, directory, umask,
/// functions and exported variables.
const SHELL_STATE: &str = "echo \"opts $- $(set -o | grep -E 'errexit|pipefail|noclobber|xtrace' | tr -s ' \\t' ' ' | tr '\\n' ,)\"; \
     echo \"traps [$(trap -p)] pwd $PWD umask $(umask)\"; declare -F; env | LC_ALL=C sort";

/// `PlanOptions::inline_housekeeping`: `prepare_script`, `get_sources` without git and
/// `cleanup_file_variables` run in the session's shell itself with the output, status and file
/// system effects of their scripts run as the session runs a stage, and leave that shell's
/// state as it was; a failure stops them where the script's `errexit` stops.
#[test]
fn housekeeping_stages_run_inline_like_their_scripts_and_leave_the_shell_alone() {
    let stages = ["prepare_script", "get_sources", "cleanup_file_variables"];
    // Each side gets its own directory with the same layout (the paths only differ in it).
    let run = |inline: bool, block_project: bool| {
        let tmp = tempfile::tempdir().expect("temp dir");
        let plan = plan_ok(&job(), &session_opts(tmp.path()));
        if block_project {
            // A file where the project directory goes: `mkdir -p` fails.
            let project = std::path::Path::new(&plan.dirs.project_dir);
            std::fs::create_dir_all(project.parent().expect("parent")).expect("parent dir");
            std::fs::write(project, "in the way").expect("blocking file");
        }
        let mut outputs = Vec::new();
        for name in stages {
            let stage = plan.stage(name).expect("stage planned");
            let file = tmp.path().join(format!("{name}.sh"));
            let session = if inline {
                let housekeeping = stage.inline().expect("an inline form");
                std::fs::write(&file, housekeeping).expect("write the stage");
                format!(
                    "{{ {SHELL_STATE}; }} > before.state\n{{ . '{}'\n}} </dev/null; echo \"status $?\" >&2; {{ {SHELL_STATE}; }} > after.state\n",
                    file.display()
                )
            } else {
                std::fs::write(&file, stage.script(runnel_job::JobStatus::Success))
                    .expect("write the stage");
                format!(
                    "( . '{}' ) </dev/null; echo \"status $?\" >&2\n",
                    file.display()
                )
            };
            let (code, stdout, stderr) = run_bash(&session, tmp.path());
            assert_eq!(code, 0, "{name}: {stderr}");
            let root = tmp.path().to_string_lossy().into_owned();
            let status = stderr.lines().last().unwrap_or_default().to_owned();
            outputs.push((name, stdout.replace(&root, "<dir>"), status));
            if inline {
                let read = |state: &str| {
                    std::fs::read_to_string(tmp.path().join(state)).expect("shell state")
                };
                let (before, after) = (read("before.state"), read("after.state"));
                assert_eq!(before, after, "{name} left the shell as it was");
            }
        }
        let project = std::path::Path::new(&plan.dirs.project_dir);
        let effects = (
            project.is_dir(),
            std::path::Path::new(&plan.dirs.temp_dir).exists(),
        );
        (outputs, effects)
    };
    for block_project in [false, true] {
        let (scripts, script_effects) = run(false, block_project);
        let (inline, inline_effects) = run(true, block_project);
        assert_eq!(
            scripts, inline,
            "same output and status (blocked: {block_project})"
        );
        assert_eq!(script_effects, inline_effects, "same effects");
        let get_sources = &inline[1];
        if block_project {
            assert_ne!(
                get_sources.2, "status 0",
                "the failed mkdir fails the stage"
            );
            assert!(
                !get_sources.1.contains("Skipping Git checkout"),
                "nothing runs after the failure: {:?}",
                get_sources.1
            );
        } else {
            assert_eq!(get_sources.2, "status 0");
            assert!(get_sources.1.contains("Skipping Git submodules setup"));
        }
    }
}

/// Only Runnel's own housekeeping has an inline form: not stages with git, a hook, user
/// commands or variables, not with `CI_DEBUG_TRACE` or the exit code check, and not for an
/// executor that does not ask for it.
#[test]
fn only_housekeeping_has_an_inline_form() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let inline_of = |job: &runnel_types::JobSpec, options: &runnel_job::PlanOptions| {
        let plan = plan_ok(job, options);
        [
            "prepare_script",
            "get_sources",
            "step_script",
            "cleanup_file_variables",
        ]
        .map(|name| plan.stage(name).and_then(|s| s.inline()).is_some())
    };
    let options = session_opts(tmp.path());
    assert_eq!(inline_of(&job(), &options), [true, true, false, true]);
    let mut clone = job();
    clone.variables.retain(|v| v.key != "GIT_STRATEGY");
    crate::support::set_var(&mut clone, "GIT_STRATEGY", "clone");
    assert_eq!(inline_of(&clone, &options), [true, false, false, true]);
    let mut hooked = options.clone();
    hooked.pre_get_sources_script = "echo hook".into();
    assert_eq!(inline_of(&job(), &hooked), [true, false, false, true]);
    for (key, value) in [
        ("CI_DEBUG_TRACE", "true"),
        ("FF_ENABLE_BASH_EXIT_CODE_CHECK", "true"),
        ("FF_USE_LEGACY_BASH_EVAL", "true"),
    ] {
        let mut flagged = job();
        crate::support::set_var(&mut flagged, key, value);
        assert_eq!(
            inline_of(&flagged, &options),
            [false, false, false, false],
            "{key}"
        );
    }
    let mut other = options.clone();
    other.inline_housekeeping = false;
    assert_eq!(inline_of(&job(), &other), [false, false, false, false]);
}
