//! Integration tests: the real `runnel` binary against the fake coordinator and real processes.

mod cache_s3;
mod commands;
mod custom;
mod docker;
mod exec;
mod fidelity;
mod flags;
mod git_sources;
mod job_data;
mod journal;
mod kubernetes;
mod private_ca;
mod register;
mod run;
mod service;
mod ssh;
mod support;
mod tidy;
