//! The Executor trait, process supervision, and the shell executor.
