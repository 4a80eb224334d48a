//! Integration tests of `runnel-job`: whole plans built from realistic jobs, checked with insta
//! snapshots (scripts, headers, variables) and by running generated scripts with bash.

mod outcome;
mod plans;
mod run_bash;
mod scripts;
mod support;
mod transfer;
