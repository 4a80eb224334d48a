//! The GitLab runner API client: the only code that knows the wire format.
