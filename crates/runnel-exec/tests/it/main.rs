//! Integration tests of runnel-exec.
