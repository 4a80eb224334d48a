//! Integration tests: the real `runnel` binary against the fake coordinator.
