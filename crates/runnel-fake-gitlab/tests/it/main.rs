//! Integration tests: drive the fake over HTTP with a plain client and check it is as strict as
//! GitLab.

mod artifacts;
mod binary;
mod control;
mod faults;
mod git;
mod jobs;
mod runners;
mod support;
mod trace;
