//! Integration tests: the real `runnel` binary against the fake coordinator and real processes.

mod commands;
mod register;
mod run;
mod support;
mod tidy;
