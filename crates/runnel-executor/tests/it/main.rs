//! Integration tests for `runnel-executor`: real processes, real `bash` and `sh`.

mod process;
mod shell;
mod support;
