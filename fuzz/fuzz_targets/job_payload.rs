//! Job payload decoding (`POST /jobs/request` 201 bodies): any bytes give a `JobSpec` or an
//! error, never a panic; every duration a payload yields is clamped, so it can be a deadline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_types::MAX_DURATION;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = runnel_api::decode_job_payload(data) {
        let durations = spec
            .timeout
            .into_iter()
            .chain(spec.steps.iter().filter_map(|s| s.timeout));
        for duration in durations {
            assert!(duration <= MAX_DURATION, "unclamped duration {duration:?}");
        }
        let _ = format!("{spec:?}");
    }
});
