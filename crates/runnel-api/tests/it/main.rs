//! Integration tests of the API client against a scripted axum server on 127.0.0.1:0.
//!
//! Each test queues the answers the server gives, drives the client, and asserts on both the
//! outcome and what went over the wire. No test talks to a real GitLab.

mod artifacts;
mod decode;
mod jobs;
mod retry;
mod runners;
mod support;
mod tls;
mod trace;
