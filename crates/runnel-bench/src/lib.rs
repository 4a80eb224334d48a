//! `runnel-bench`: measures real `runnel` processes against the fake coordinator.
//!
//! The binary starts [`runnel_fake_gitlab::FakeGitlab`] in-process on a loopback port, writes a
//! config.toml for one shell runner, starts `runnel run` on it, and measures what GitLab users
//! care about: idle memory, pickup latency with and without long polling, end-to-end time of a
//! trivial job, throughput at several `concurrent` values, memory and CPU per running job, and
//! throughput, CPU and latency of the job log path, plus the floors (bare process spawn, bare
//! loopback HTTP round trip) those numbers stand on. Each measurement is repeated and
//! summarised as min / median / max ([`stats`]), printed as a table and written as JSON
//! ([`report`]). `docs/performance.md` explains every metric and holds measured numbers.
//!
//! It measures; it does not judge. There are no thresholds, and nothing here is meant to run
//! in the regular test suite except the `--quick` smoke run. It is Linux only (it reads
//! `/proc`), and it measures the runner on the same machine as the fake, so both share CPUs.

pub mod error;
pub mod plots;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod stats;

pub use error::BenchError;
pub use report::{METRICS, MetricDef, Report, Scenario};
pub use scenarios::{Plan, default_python_peer, run};
