//! Routes: bearer-token check, pods CRUD with `Status` errors, exec and attach dispatch.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::state::{Backing, PodEntry, Shared};

type Shared_ = Arc<Shared>;

/// The `ResourceQuota` named when [`crate::Faults::exceed_pod_quota`] refuses a pod.
const QUOTA_NAME: &str = "runnel-fake-kube-pods";

pub(crate) fn router(shared: Shared_) -> Router {
    crate::objects::routes(Router::new())
        .route(
            "/api/v1/namespaces/{namespace}/pods",
            get(list_pods).post(create_pod),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}",
            get(get_pod).delete(delete_pod),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            get(exec_pod).post(exec_pod_post),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/attach",
            get(attach_pod).post(exec_pod_post),
        )
        .fallback(not_served)
        .with_state(shared)
}

/// A `Status` object as the real API server sends it, with its HTTP code.
pub fn status(code: StatusCode, reason: &str, message: &str, details: Value) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn not_found(name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("pods \"{name}\" not found"),
        json!({"name": name, "kind": "pods"}),
    )
}

fn invalid(name: &str, message: &str) -> Response {
    status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        &format!("Pod \"{name}\" is invalid: {message}"),
        json!({"name": name, "kind": "Pod"}),
    )
}

/// Every route needs `Authorization: Bearer <token>`.
#[allow(clippy::result_large_err)] // a response is what the caller returns
pub(crate) fn authorized(shared: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let expected = format!("Bearer {}", shared.token);
    match headers.get(axum::http::header::AUTHORIZATION) {
        Some(value) if value.as_bytes() == expected.as_bytes() => Ok(()),
        _ => Err(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
            json!({}),
        )),
    }
}

async fn not_served(headers: HeaderMap, State(shared): State<Shared_>) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
        json!({}),
    )
}

/// The query's pairs, repeated keys kept.
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// `a=b,c,d!=e` against `labels`.
pub(crate) fn selector_matches(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|term| !term.is_empty())
        .all(|term| {
            if let Some((key, value)) = term.split_once("!=") {
                labels[key.trim()].as_str() != Some(value.trim())
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                labels[key.trim()].as_str() == Some(value.trim())
            } else if let Some(key) = term.strip_prefix('!') {
                labels.get(key).is_none()
            } else {
                labels.get(term).is_some()
            }
        })
}

async fn list_pods(
    headers: HeaderMap,
    State(shared): State<Shared_>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    let pairs = query_pairs(query.as_deref());
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    let filter = match PodFilter::new(&namespace, &param("labelSelector"), &param("fieldSelector"))
    {
        Ok(filter) => filter,
        Err(message) => {
            return status(StatusCode::BAD_REQUEST, "BadRequest", &message, json!({}));
        }
    };
    if !matches!(param("watch").as_str(), "" | "false" | "0") {
        if shared.faults().refuse_watches {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                json!({}),
            );
        }
        return crate::watch::watch(
            &shared,
            filter,
            &param("resourceVersion"),
            &param("timeoutSeconds"),
        );
    }
    let inner = shared.lock();
    let items: Vec<Value> = inner
        .pods
        .values()
        .filter(|entry| filter.matches(&entry.object))
        .map(|entry| entry.object.clone())
        .collect();
    axum::Json(json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": inner.version()},
        "items": items,
    }))
    .into_response()
}

/// Which pods a list or watch returns: a namespace, a label selector and a field selector.
#[derive(Clone, Debug)]
pub(crate) struct PodFilter {
    namespace: String,
    labels: String,
    /// `(field, value, equal)`.
    fields: Vec<(String, String, bool)>,
}

impl PodFilter {
    /// The filter, or the message of a `BadRequest` for a field this server does not select on
    /// (as a real server answers for fields a resource does not index).
    pub(crate) fn new(namespace: &str, labels: &str, fields: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in fields.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                return Err(format!("invalid field selector: {term:?}"));
            };
            let field = field.trim();
            if !["metadata.name", "metadata.namespace"].contains(&field) {
                return Err(format!(
                    "field label not supported: {field} (runnel-fake-kube selects pods on metadata.name and metadata.namespace)"
                ));
            }
            terms.push((field.to_owned(), value.trim().to_owned(), equal));
        }
        Ok(PodFilter {
            namespace: namespace.to_owned(),
            labels: labels.to_owned(),
            fields: terms,
        })
    }

    /// Whether the pod object passes.
    pub(crate) fn matches(&self, pod: &Value) -> bool {
        let metadata = &pod["metadata"];
        metadata["namespace"].as_str() == Some(self.namespace.as_str())
            && selector_matches(&self.labels, &metadata["labels"])
            && self.fields.iter().all(|(field, value, equal)| {
                let actual = match field.as_str() {
                    "metadata.name" => metadata["name"].as_str(),
                    _ => metadata["namespace"].as_str(),
                };
                (actual == Some(value.as_str())) == *equal
            })
    }
}

async fn get_pod(
    headers: HeaderMap,
    State(shared): State<Shared_>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    match shared.pod_json(&namespace, &name) {
        Some(pod) => axum::Json(pod).into_response(),
        None => not_found(&name),
    }
}

/// Checks what a real API server would refuse; returns the message of an `Invalid` status.
fn validate(pod: &Value) -> Result<(), String> {
    let spec = &pod["spec"];
    let containers = spec["containers"]
        .as_array()
        .filter(|list| !list.is_empty())
        .ok_or("spec.containers: Required value")?;
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .map(|list| list.iter().filter_map(|v| v["name"].as_str()).collect())
        .unwrap_or_default();
    let init_containers = spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut names = Vec::new();
    let all = init_containers
        .iter()
        .enumerate()
        .map(|(index, c)| ("initContainers", index, c))
        .chain(
            containers
                .iter()
                .enumerate()
                .map(|(index, c)| ("containers", index, c)),
        );
    for (field, index, container) in all {
        let name = container["name"]
            .as_str()
            .filter(|name| !name.is_empty())
            .ok_or(format!("spec.{field}[{index}].name: Required value"))?;
        if names.contains(&name) {
            return Err(format!(
                "spec.{field}[{index}].name: Duplicate value: \"{name}\""
            ));
        }
        names.push(name);
        if container["image"].as_str().is_none_or(str::is_empty) {
            return Err(format!("spec.{field}[{index}].image: Required value"));
        }
        if let Some(policy) = container["imagePullPolicy"].as_str()
            && !["Always", "IfNotPresent", "Never"].contains(&policy)
        {
            return Err(format!(
                "spec.{field}[{index}].imagePullPolicy: Unsupported value: \"{policy}\": supported values: \"Always\", \"IfNotPresent\", \"Never\""
            ));
        }
        for (m, mount) in container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let volume = mount["name"].as_str().unwrap_or("");
            if !volumes.contains(&volume) {
                return Err(format!(
                    "spec.{field}[{index}].volumeMounts[{m}].name: Not found: \"{volume}\""
                ));
            }
        }
    }
    for (index, volume) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let known = ["emptyDir", "hostPath", "secret", "configMap"];
        if !known.iter().any(|kind| volume.get(*kind).is_some()) {
            return Err(format!(
                "spec.volumes[{index}]: runnel-fake-kube serves only emptyDir, hostPath, secret and configMap volumes"
            ));
        }
        for item in volume["secret"]["items"]
            .as_array()
            .into_iter()
            .chain(volume["configMap"]["items"].as_array())
            .flatten()
        {
            let path = item["path"].as_str().unwrap_or("");
            if path.is_empty() || path.starts_with('/') || path.split('/').any(|p| p == "..") {
                return Err(format!(
                    "spec.volumes[{index}].items.path: Invalid value: \"{path}\": must be a relative path without '..'"
                ));
            }
        }
    }
    Ok(())
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

async fn create_pod(
    headers: HeaderMap,
    State(shared): State<Shared_>,
    Path(namespace): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    let mut pod: Value = match serde_json::from_slice(&body) {
        Ok(pod @ Value::Object(_)) => pod,
        Ok(_) | Err(_) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body of the request was in an unknown format",
                json!({}),
            );
        }
    };
    let name = match (
        pod["metadata"]["name"].as_str(),
        pod["metadata"]["generateName"].as_str(),
    ) {
        (Some(name), _) if !name.is_empty() => name.to_owned(),
        (_, Some(prefix)) if !prefix.is_empty() => format!(
            "{prefix}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..5]
        ),
        _ => {
            return invalid(
                "",
                "metadata.name: Required value: name or generateName is required",
            );
        }
    };
    if let Some(ns) = pod["metadata"]["namespace"].as_str()
        && ns != namespace
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
            json!({}),
        );
    }
    if name.len() > 63 {
        return invalid(
            &name,
            "metadata.name: Invalid value: must be no more than 63 characters",
        );
    }
    if let Err(message) = validate(&pod) {
        return invalid(&name, &message);
    }
    if let Err(response) = crate::objects::namespace_exists(&shared, &namespace) {
        return response;
    }
    if shared.faults().exceed_pod_quota {
        // What the ResourceQuota admission plugin answers for a namespace whose quota
        // allows no more pods.
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "pods \"{name}\" is forbidden: exceeded quota: {QUOTA_NAME}, requested: pods=1, used: pods=0, limited: pods=0"
            ),
            json!({"name": name, "kind": "pods"}),
        );
    }
    let key = (namespace.clone(), name.clone());
    {
        let mut inner = shared.lock();
        if inner.pods.contains_key(&key) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("pods \"{name}\" already exists"),
                json!({"name": name, "kind": "pods"}),
            );
        }
        inner.record_created(pod.clone());
        let version = inner.bump();
        let metadata = &mut pod["metadata"];
        metadata["name"] = json!(name);
        metadata["namespace"] = json!(namespace);
        metadata["uid"] = json!(uuid::Uuid::new_v4().to_string());
        metadata["resourceVersion"] = json!(version);
        metadata["creationTimestamp"] = json!(now());
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        pod["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        let number = inner.version_number();
        shared.record_event(&mut inner, "ADDED", number, &pod);
        inner.pods.insert(
            key.clone(),
            PodEntry {
                object: pod.clone(),
                backing: Backing::default(),
            },
        );
    }
    tokio::spawn(crate::docker::run_pod(Arc::clone(&shared), key));
    (StatusCode::CREATED, axum::Json(pod)).into_response()
}

async fn delete_pod(
    headers: HeaderMap,
    State(shared): State<Shared_>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    let removed = remove_pod(&shared, &namespace, &name);
    let Some(entry) = removed else {
        return not_found(&name);
    };
    crate::docker::remove_backing(&shared, &entry.backing).await;
    axum::Json(entry.object).into_response()
}

/// Removes a pod from the store (stamped as deleted, for watches); its docker objects are the
/// caller's to remove.
pub(crate) fn remove_pod(shared: &Shared, namespace: &str, name: &str) -> Option<PodEntry> {
    let mut inner = shared.lock();
    let mut entry = inner
        .pods
        .remove(&(namespace.to_owned(), name.to_owned()))?;
    let version = inner.bump();
    let metadata = &mut entry.object["metadata"];
    metadata["deletionTimestamp"] = json!(now());
    metadata["deletionGracePeriodSeconds"] = json!(0);
    metadata["resourceVersion"] = json!(version);
    let number = inner.version_number();
    shared.record_event(&mut inner, "DELETED", number, &entry.object);
    Some(entry)
}

/// What a WebSocket session on a pod runs.
#[derive(Clone, Copy, Debug)]
enum Session {
    /// `…/exec`: a new process.
    Exec,
    /// `…/attach`: the container's main process.
    Attach,
}

async fn exec_pod(
    headers: HeaderMap,
    state: State<Shared_>,
    path: Path<(String, String)>,
    query: RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    pod_session(Session::Exec, headers, state, path, query, upgrade).await
}

async fn attach_pod(
    headers: HeaderMap,
    state: State<Shared_>,
    path: Path<(String, String)>,
    query: RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    pod_session(Session::Attach, headers, state, path, query, upgrade).await
}

async fn pod_session(
    session: Session,
    headers: HeaderMap,
    State(shared): State<Shared_>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    let Ok(upgrade) = upgrade else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Upgrade request required",
            json!({}),
        );
    };
    let query = query_pairs(query.as_deref());
    match session {
        Session::Exec => crate::exec::exec(shared, namespace, name, query, upgrade).await,
        Session::Attach => crate::exec::attach(shared, namespace, name, query, upgrade).await,
    }
}

async fn exec_pod_post(headers: HeaderMap, State(shared): State<Shared_>) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    status(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        "runnel-fake-kube serves exec and attach over WebSocket only (no SPDY)",
        json!({}),
    )
}

/// Labels from the pod's metadata, for docker labels.
pub(crate) fn labels_of(pod: &Value) -> BTreeMap<String, String> {
    pod["metadata"]["labels"]
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_follow_equality_and_existence() {
        let labels = json!({"a": "1", "b": "2"});
        assert!(selector_matches("a=1", &labels));
        assert!(selector_matches("a==1,b", &labels));
        assert!(selector_matches("a!=2,!c", &labels));
        assert!(!selector_matches("a=2", &labels));
        assert!(!selector_matches("c", &labels));
        assert!(selector_matches("", &labels));
    }

    #[test]
    fn pods_referring_to_missing_volumes_are_invalid() {
        let pod = json!({"spec": {"containers": [
            {"name": "build", "image": "x", "volumeMounts": [{"name": "repo", "mountPath": "/builds"}]}
        ]}});
        assert_eq!(
            validate(&pod).unwrap_err(),
            "spec.containers[0].volumeMounts[0].name: Not found: \"repo\""
        );
        let duplicate = json!({"spec": {"containers": [
            {"name": "a", "image": "x"}, {"name": "a", "image": "y"}
        ]}});
        assert!(validate(&duplicate).unwrap_err().contains("Duplicate"));
    }
}
