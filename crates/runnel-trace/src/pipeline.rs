//! The per-stream chain of filters a write passes through before it reaches the buffer.
//!
//! Order: masked values -> URL parameters -> token prefixes -> UTF-8 repair -> timestamps.
//! Masking comes first so that a masked value is matched exactly as the job printed it,
//! before any other filter rewrites part of it; timestamps come last so that the header
//! they insert can never split a secret. Every stage is streaming: it keeps whatever state
//! a value split across writes needs and gives it back on [`Pipeline::flush`].
//!
//! The output limit, checksum and storage are shared by all streams and live in
//! [`crate::store`], not here.

use std::sync::Arc;

use crate::Stream;
use crate::mask::Masker;
use crate::matcher::StreamMatcher;
use crate::timestamp::{Clock, Timestamper};
use crate::token::TokenSanitizer;
use crate::url::UrlSanitizer;
use crate::utf8::Utf8Sanitizer;

/// What a stage did with a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// The input passes through exactly as it is; nothing was written to `out`. This
    /// saves a copy on the common path where a stage has nothing to change.
    Unchanged,
    /// What can be released now was appended to `out`.
    Written,
}

/// One streaming filter.
pub(crate) trait Stage: Send {
    /// Filters `input`, appending what can be released now to `out` (see [`Output`]).
    fn write(&mut self, input: &[u8], out: &mut Vec<u8>) -> Output;

    /// Releases everything held back, as if the stream had ended.
    fn flush(&mut self, out: &mut Vec<u8>);
}

/// The compiled, shareable parts every stream's pipeline is built from.
#[derive(Clone)]
pub(crate) struct PipelineSpec {
    pub(crate) masked: Option<Arc<StreamMatcher>>,
    pub(crate) token_prefixes: Arc<StreamMatcher>,
    pub(crate) clock: Option<Arc<dyn Clock>>,
}

/// The filter chain of one output stream.
pub(crate) struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
    /// Ping-pong buffers between stages, kept to avoid allocating on every write.
    buffers: [Vec<u8>; 2],
}

impl Pipeline {
    pub(crate) fn new(spec: &PipelineSpec, stream: Stream) -> Self {
        let mut stages: Vec<Box<dyn Stage>> = Vec::with_capacity(5);
        if let Some(masked) = &spec.masked {
            stages.push(Box::new(Masker::new(Arc::clone(masked))));
        }
        stages.push(Box::new(UrlSanitizer::default()));
        stages.push(Box::new(TokenSanitizer::new(Arc::clone(
            &spec.token_prefixes,
        ))));
        stages.push(Box::new(Utf8Sanitizer::default()));
        if let Some(clock) = &spec.clock {
            stages.push(Box::new(Timestamper::new(Arc::clone(clock), stream)));
        }
        Self {
            stages,
            buffers: [Vec::new(), Vec::new()],
        }
    }

    /// Runs `input` through every stage and returns what is ready for the buffer.
    pub(crate) fn write<'a>(&'a mut self, input: &'a [u8]) -> &'a [u8] {
        self.run_from(0, input)
    }

    /// Releases what every stage holds back, in stream order.
    pub(crate) fn flush(&mut self) -> Vec<u8> {
        let mut released = Vec::new();
        let mut held = Vec::new();
        for index in 0..self.stages.len() {
            held.clear();
            self.stages[index].flush(&mut held);
            if !held.is_empty() {
                released.extend_from_slice(self.run_from(index + 1, &held));
            }
        }
        released
    }

    fn run_from<'a>(&'a mut self, first: usize, input: &'a [u8]) -> &'a [u8] {
        let [a, b] = &mut self.buffers;
        let mut current = Current::Input;
        for stage in self.stages.iter_mut().skip(first) {
            let (source, target, written): (&[u8], &mut Vec<u8>, Current) = match current {
                Current::Input => (input, &mut *a, Current::A),
                Current::A => (a.as_slice(), &mut *b, Current::B),
                Current::B => (b.as_slice(), &mut *a, Current::A),
            };
            target.clear();
            if stage.write(source, target) == Output::Written {
                current = written;
            }
        }
        match current {
            Current::Input => input,
            Current::A => a,
            Current::B => b,
        }
    }
}

/// Where the data between two stages lives.
#[derive(Clone, Copy)]
enum Current {
    Input,
    A,
    B,
}

/// Writes `input` through `stage`, copying it to `out` when the stage passes it through.
#[cfg(test)]
pub(crate) fn write_through(stage: &mut dyn Stage, input: &[u8], out: &mut Vec<u8>) {
    if stage.write(input, out) == Output::Unchanged {
        out.extend_from_slice(input);
    }
}
