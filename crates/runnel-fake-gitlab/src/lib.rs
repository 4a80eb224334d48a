//! A strict fake GitLab coordinator for tests and benchmarks.
