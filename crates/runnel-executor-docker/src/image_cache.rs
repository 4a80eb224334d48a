//! The job images a provider found locally, so that later jobs do not inspect them again.
//!
//! A job whose pull policies do not include `always` uses a local image when there is one
//! (`never`, `if-not-present`): a job inspects it ([`crate::image::ensure_image`]) and the id
//! is kept here under the image's name. An id is only trusted while the Engine's image events
//! are followed: one stream per provider (`GET /events`, images only), which starts from the
//! beginning of the daemon's event buffer, so an event between a job's inspect and the moment
//! the daemon registers the stream is replayed rather than missed.
//!
//! - An event naming a kept image or id (`tag`: a rebuild or `docker tag` moved a name;
//!   `untag`, `delete`, `pull`) forgets that image, also when it comes while a job is
//!   inspecting it (that inspect is then not kept).
//! - Any other image event (`load`, `import`, an action this code does not know) and any
//!   break of the stream forget everything.
//!
//! So a name that now names another image is inspected again: jobs run the image their name
//! names, and the log names its id. Should the image be gone anyway, creating the container
//! fails and the executor forgets the name and gets the image again by its policies.
//!
//! `always` pulls for every job, so such jobs neither use nor fill this cache.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use futures::StreamExt;

use crate::image::FoundImage;

/// The first and the longest wait before the event stream is opened again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How many recent events are remembered for inspects under way.
const RECENT_EVENTS: usize = 256;

/// Image ids by name, valid while the Engine's image events are followed.
#[derive(Debug, Default)]
pub(crate) struct ImageCache {
    state: Arc<Mutex<State>>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Where the events stood when an inspect started; see [`ImageCache::token`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    generation: u64,
    seq: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Familiar image name → the image as found.
    entries: HashMap<String, FoundImage>,
    /// Moves when everything is forgotten.
    generation: u64,
    /// Counts the events.
    seq: u64,
    /// The last events that named images: (seq, the names and ids they name).
    recent: VecDeque<(u64, Vec<String>)>,
    /// Whether the event stream is open (or being opened).
    watching: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `name` as the Engine's events write it: without `docker.io/` and `library/`, with a tag
/// (`:latest` when it has none and no digest).
fn familiar(name: &str) -> String {
    let name = name
        .strip_prefix("docker.io/")
        .or_else(|| name.strip_prefix("index.docker.io/"))
        .unwrap_or(name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

impl State {
    fn forget_all(&mut self) {
        self.generation += 1;
        self.entries.clear();
        self.recent.clear();
    }

    /// Records one image event.
    fn event(&mut self, action: &str, actor: Option<&str>, name: Option<&str>) {
        self.seq += 1;
        match action {
            "tag" | "untag" | "delete" | "pull" | "push" | "save" => {
                let mut named: Vec<String> = Vec::new();
                for text in [actor, name].into_iter().flatten() {
                    named.push(text.to_owned());
                    named.push(familiar(text));
                }
                self.entries
                    .retain(|image, found| !named.contains(image) && !named.contains(&found.id));
                if self.recent.len() == RECENT_EVENTS {
                    self.recent.pop_front();
                }
                self.recent.push_back((self.seq, named));
            }
            _ => self.forget_all(),
        }
    }
}

impl ImageCache {
    /// Starts following the image events of `docker`, once per provider.
    pub(crate) fn watch(&self, docker: &Docker) {
        let mut watcher = lock(&self.watcher);
        if watcher.is_some() {
            return;
        }
        {
            let mut state = lock(&self.state);
            state.forget_all();
            state.watching = true;
        }
        let state = Arc::clone(&self.state);
        let docker = docker.clone();
        *watcher = Some(tokio::spawn(follow(state, docker)));
    }

    /// Where the events stand, taken before an inspect; `None` while image events are not
    /// followed (nothing is kept then).
    pub(crate) fn token(&self) -> Option<Token> {
        let state = lock(&self.state);
        state.watching.then_some(Token {
            generation: state.generation,
            seq: state.seq,
        })
    }

    /// `image` as inspected, if no image event since concerned it.
    pub(crate) fn get(&self, image: &str) -> Option<FoundImage> {
        let state = lock(&self.state);
        if !state.watching {
            return None;
        }
        state.entries.get(&familiar(image)).cloned()
    }

    /// Keeps `found` for `image`, inspected after `token` was taken, unless an event since
    /// then concerned either.
    pub(crate) fn insert(&self, image: &str, found: &FoundImage, token: Option<Token>) {
        let id = found.id.as_str();
        let Some(token) = token else { return };
        let mut state = lock(&self.state);
        if !state.watching || state.generation != token.generation {
            return;
        }
        let image = familiar(image);
        let after: Vec<&Vec<String>> = state
            .recent
            .iter()
            .filter(|(seq, _)| *seq > token.seq)
            .map(|(_, named)| named)
            .collect();
        // Events after the token that are no longer remembered: nothing can be said.
        let complete =
            state.seq == token.seq || state.recent.iter().any(|(seq, _)| *seq == token.seq + 1);
        let concerned = after
            .iter()
            .any(|named| named.contains(&image) || named.iter().any(|n| n == id));
        if complete && !concerned {
            state.entries.insert(image, found.clone());
        }
    }

    /// Forgets `image` (a container could not be created from its id).
    pub(crate) fn forget(&self, image: &str) {
        lock(&self.state).entries.remove(&familiar(image));
    }
}

impl Drop for ImageCache {
    fn drop(&mut self) {
        if let Some(watcher) = lock(&self.watcher).take() {
            watcher.abort();
        }
    }
}

/// Follows the image events for ever, opening the stream again when it breaks.
async fn follow(state: Arc<Mutex<State>>, docker: Docker) {
    let mut retry = RETRY_FIRST;
    loop {
        let mut events = docker.events(Some(EventsOptions {
            // From the start of the daemon's buffer: the events between the moment this
            // request is made and the moment the daemon registers it are replayed.
            since: Some("1".to_owned()),
            until: None,
            filters: Some(HashMap::from([(
                "type".to_owned(),
                vec!["image".to_owned()],
            )])),
        }));
        let mut any = false;
        let ended = loop {
            match events.next().await {
                Some(Ok(event)) => {
                    any = true;
                    record(&state, &event);
                }
                Some(Err(error)) => break Some(error),
                None => break None,
            }
        };
        {
            let mut state = lock(&state);
            state.watching = false;
            state.forget_all();
        }
        match ended {
            Some(error) => tracing::debug!(%error, "docker image events broke off"),
            None => tracing::debug!("docker image events ended"),
        }
        if any {
            retry = RETRY_FIRST;
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
        let mut state = lock(&state);
        state.forget_all();
        state.watching = true;
    }
}

fn record(state: &Mutex<State>, event: &EventMessage) {
    let actor = event.actor.as_ref();
    let name = actor
        .and_then(|actor| actor.attributes.as_ref())
        .and_then(|attributes| attributes.get("name"));
    tracing::trace!(action = ?event.action, ?actor, "docker image event");
    lock(state).event(
        event.action.as_deref().unwrap_or_default(),
        actor.and_then(|actor| actor.id.as_deref()),
        name.map(String::as_str),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(id: &str) -> FoundImage {
        FoundImage {
            id: id.to_owned(),
            user: String::new(),
        }
    }

    fn watching() -> ImageCache {
        let cache = ImageCache::default();
        lock(&cache.state).watching = true;
        cache
    }

    fn event(cache: &ImageCache, action: &str, actor: &str, name: &str) {
        lock(&cache.state).event(action, Some(actor), Some(name));
    }

    #[test]
    fn names_are_compared_as_the_events_write_them() {
        assert_eq!(familiar("busybox"), "busybox:latest");
        assert_eq!(familiar("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(
            familiar("registry:5000/group/app"),
            "registry:5000/group/app:latest"
        );
        assert_eq!(familiar("app@sha256:ab"), "app@sha256:ab");
    }

    #[test]
    fn nothing_is_kept_unless_events_are_followed() {
        let cache = ImageCache::default();
        assert_eq!(cache.token(), None);
        cache.insert("a:1", &found("sha256:1"), cache.token());
        assert_eq!(cache.get("a:1"), None);
        let cache = watching();
        cache.insert("a:1", &found("sha256:1"), cache.token());
        assert_eq!(
            cache.get("a:1").map(|found| found.id).as_deref(),
            Some("sha256:1")
        );
        // The stream broke: nothing is trusted.
        lock(&cache.state).watching = false;
        assert_eq!(cache.get("a:1"), None);
    }

    #[test]
    fn an_event_naming_an_image_or_its_id_forgets_it_and_only_it() {
        let cache = watching();
        cache.insert("app", &found("sha256:1"), cache.token());
        cache.insert("tool:2", &found("sha256:2"), cache.token());
        cache.insert("other:3", &found("sha256:3"), cache.token());
        // A rebuild moved `app:latest`.
        event(&cache, "tag", "sha256:9", "app:latest");
        // `tool:2`'s image was removed (its events carry only the id).
        event(&cache, "delete", "sha256:2", "sha256:2");
        // Another image's events change nothing here.
        event(&cache, "tag", "sha256:8", "unrelated:1");
        assert_eq!(cache.get("app"), None);
        assert_eq!(cache.get("tool:2"), None);
        assert_eq!(
            cache.get("other:3").map(|found| found.id).as_deref(),
            Some("sha256:3")
        );
        // An action not known here forgets everything.
        event(&cache, "load", "sha256:7", "sha256:7");
        assert_eq!(cache.get("other:3"), None);
    }

    #[test]
    fn an_event_during_an_inspect_keeps_that_inspect_out() {
        let cache = watching();
        let token = cache.token();
        event(&cache, "tag", "sha256:9", "app:latest");
        cache.insert("app:latest", &found("sha256:1"), token);
        assert_eq!(cache.get("app"), None);
        // An event about another image does not matter.
        let token = cache.token();
        event(&cache, "tag", "sha256:8", "unrelated:1");
        cache.insert("app:latest", &found("sha256:9"), token);
        assert_eq!(
            cache.get("app").map(|found| found.id).as_deref(),
            Some("sha256:9")
        );
        // Too many events to know: not kept.
        let token = cache.token();
        for index in 0..=RECENT_EVENTS {
            event(&cache, "tag", "sha256:8", &format!("unrelated:{index}"));
        }
        cache.insert("tool:1", &found("sha256:5"), token);
        assert_eq!(cache.get("tool:1"), None);
        cache.forget("app");
        assert_eq!(cache.get("app"), None);
    }
}
