//! Integration tests: the real `runnel` binary against the fake coordinator and real processes.

mod cache_s3;
mod commands;
mod custom;
mod docker;
mod exec;
mod git_sources;
mod job_data;
mod journal;
mod register;
mod run;
mod service;
mod ssh;
mod support;
mod tidy;
