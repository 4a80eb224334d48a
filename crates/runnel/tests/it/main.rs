//! Integration tests: the real `runnel` binary against the fake coordinator and real processes.

mod cache_s3;
mod commands;
mod docker;
mod exec;
mod git_sources;
mod job_data;
mod kubernetes;
mod register;
mod run;
mod service;
mod support;
mod tidy;
