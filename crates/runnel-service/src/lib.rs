//! The runner daemon: polling, job supervision, trace upload, shutdown.
