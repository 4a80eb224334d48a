//! Integration tests of the Docker executor against the real Docker engine.
//!
//! Every image is built locally (no registry is needed) and cached by tag, so reruns are quick.
//! Docker is required: when the daemon is not reachable the tests fail with a message saying so.

mod executor;
mod hardening;
mod images;
mod planned;
mod support;
