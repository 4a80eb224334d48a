//! config.toml: read, validate, edit and save the official runner configuration.
