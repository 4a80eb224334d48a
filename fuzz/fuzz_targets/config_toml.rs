//! config.toml parsing and validation: any text gives a config or diagnostics, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn no_env(_: &str) -> Option<String> {
    None
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = runnel_config::ConfigFile::parse("config.toml", text, no_env) {
        let config = file.config();
        // Durations from config.toml are clamped, so each can be added to "now".
        let mut durations = vec![
            config.check_interval(),
            config.shutdown_timeout(),
            config.connection_max_age(),
            config.session_server.session_timeout(),
        ];
        for runner in &config.runners {
            durations.push(runner.unhealthy_interval());
            durations.push(runner.artifact_upload_timeout());
            durations.push(runner.artifact_response_header_timeout());
            if let Some(docker) = &runner.docker {
                durations.extend(docker.wait_for_services_timeout());
            }
        }
        for duration in durations {
            assert!(
                duration <= runnel_types::MAX_DURATION,
                "unclamped {duration:?}"
            );
        }
        let _ = format!("{config:?} {:?}", file.warnings());
    }
});
