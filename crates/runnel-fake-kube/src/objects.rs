//! Namespaces, secrets and config maps: stored objects the pods' volumes refer to.
//!
//! ```text
//! POST/GET/DELETE   /api/v1/namespaces[/{name}]                    (default, kube-system and
//!                                                                   kube-public always exist)
//! POST/GET/DELETE   /api/v1/namespaces/{ns}/secrets[/{name}]       (data base64, stringData)
//! POST/GET/DELETE   /api/v1/namespaces/{ns}/configmaps[/{name}]    (data, binaryData base64)
//! ```
//!
//! Deleting a namespace deletes its pods (with their containers), secrets and config maps at
//! once. Pods, secrets and config maps can only be made in a namespace that exists.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::{Value, json};

use crate::server::{authorized, now, status};
use crate::state::Shared;

type Shared_ = Arc<Shared>;

/// The namespaces every cluster has.
pub(crate) const BUILTIN_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// Largest object body accepted.
const MAX_OBJECT_BYTES: usize = 1 << 20;

pub(crate) fn routes(router: Router<Shared_>) -> Router<Shared_> {
    router
        .route(
            "/api/v1/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route(
            "/api/v1/namespaces/{name}",
            get(get_namespace).delete(delete_namespace),
        )
        .merge(object_routes(SECRET))
        .merge(object_routes(CONFIG_MAP))
}

/// `POST …/{namespace}/<plural>`, `GET` and `DELETE …/{namespace}/<plural>/{name}`.
fn object_routes(kind: Kind) -> Router<Shared_> {
    Router::new()
        .route(
            &format!("/api/v1/namespaces/{{namespace}}/{}", kind.plural),
            axum::routing::post(
                move |headers: HeaderMap,
                      State(shared): State<Shared_>,
                      Path(namespace): Path<String>,
                      body: axum::body::Bytes| {
                    create_object(kind, headers, shared, namespace, body)
                },
            )
            .get(
                move |headers: HeaderMap,
                      State(shared): State<Shared_>,
                      Path(namespace): Path<String>,
                      RawQuery(query): RawQuery| async move {
                    list_objects(kind, &headers, &shared, &namespace, query.as_deref())
                },
            ),
        )
        .route(
            &format!("/api/v1/namespaces/{{namespace}}/{}/{{name}}", kind.plural),
            get(
                move |headers: HeaderMap,
                      State(shared): State<Shared_>,
                      Path((namespace, name)): Path<(String, String)>| async move {
                    get_object(kind, &headers, &shared, namespace, name)
                },
            )
            .delete(
                move |headers: HeaderMap,
                      State(shared): State<Shared_>,
                      Path((namespace, name)): Path<(String, String)>| async move {
                    delete_object(kind, &headers, &shared, namespace, name)
                },
            ),
        )
}

fn not_found(kind: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        json!({"name": name, "kind": kind}),
    )
}

/// `namespaces "x" not found` when `namespace` does not exist.
#[allow(clippy::result_large_err)] // a response is what the caller returns
pub(crate) fn namespace_exists(shared: &Shared, namespace: &str) -> Result<(), Response> {
    if BUILTIN_NAMESPACES.contains(&namespace) || shared.lock().namespaces.contains_key(namespace) {
        Ok(())
    } else {
        Err(not_found("namespaces", namespace))
    }
}

#[allow(clippy::result_large_err)] // a response is what the caller returns
fn parse_body(body: &[u8], kind: &str) -> Result<(Value, String), Response> {
    if body.len() > MAX_OBJECT_BYTES {
        return Err(status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "the object is larger than runnel-fake-kube accepts",
            json!({}),
        ));
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            return Err(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body of the request was in an unknown format",
                json!({}),
            ));
        }
    };
    let name = value["metadata"]["name"].as_str().unwrap_or("").to_owned();
    if name.is_empty() || name.len() > 253 {
        return Err(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!("{kind} \"{name}\" is invalid: metadata.name: Required value"),
            json!({"name": name, "kind": kind}),
        ));
    }
    Ok((value, name))
}

fn already_exists(kind: &str, name: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "AlreadyExists",
        &format!("{kind} \"{name}\" already exists"),
        json!({"name": name, "kind": kind}),
    )
}

fn stamp(shared: &Shared, object: &mut Value, kind: &str, namespace: Option<&str>) {
    let version = shared.lock().bump();
    object["apiVersion"] = json!("v1");
    object["kind"] = json!(kind);
    let metadata = &mut object["metadata"];
    metadata["uid"] = json!(uuid::Uuid::new_v4().to_string());
    metadata["resourceVersion"] = json!(version);
    metadata["creationTimestamp"] = json!(now());
    if let Some(namespace) = namespace {
        metadata["namespace"] = json!(namespace);
    }
}

async fn list_namespaces(
    headers: HeaderMap,
    State(shared): State<Shared_>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    let selector = crate::server::query_pairs(query.as_deref())
        .into_iter()
        .find(|(key, _)| key == "labelSelector")
        .map(|(_, value)| value)
        .unwrap_or_default();
    let inner = shared.lock();
    let items: Vec<Value> = BUILTIN_NAMESPACES
        .iter()
        .map(|name| namespace_object(name))
        .chain(inner.namespaces.values().cloned())
        .filter(|object| crate::server::selector_matches(&selector, &object["metadata"]["labels"]))
        .collect();
    axum::Json(json!({
        "kind": "NamespaceList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": inner.version()},
        "items": items,
    }))
    .into_response()
}

fn namespace_object(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "status": {"phase": "Active"}})
}

async fn create_namespace(
    headers: HeaderMap,
    State(shared): State<Shared_>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    let (mut object, name) = match parse_body(&body, "Namespace") {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    if BUILTIN_NAMESPACES.contains(&name.as_str()) || shared.lock().namespaces.contains_key(&name) {
        return already_exists("namespaces", &name);
    }
    stamp(&shared, &mut object, "Namespace", None);
    object["status"] = json!({"phase": "Active"});
    {
        let mut inner = shared.lock();
        inner.created_namespaces.push(name.clone());
        inner.created_namespace_objects.push(object.clone());
        inner.namespaces.insert(name, object.clone());
    }
    (StatusCode::CREATED, axum::Json(object)).into_response()
}

async fn get_namespace(
    headers: HeaderMap,
    State(shared): State<Shared_>,
    Path(name): Path<String>,
) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    if BUILTIN_NAMESPACES.contains(&name.as_str()) {
        return axum::Json(namespace_object(&name)).into_response();
    }
    match shared.lock().namespaces.get(&name) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => not_found("namespaces", &name),
    }
}

async fn delete_namespace(
    headers: HeaderMap,
    State(shared): State<Shared_>,
    Path(name): Path<String>,
) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    if BUILTIN_NAMESPACES.contains(&name.as_str()) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            json!({"name": name, "kind": "namespaces"}),
        );
    }
    let (object, pods) = {
        let mut inner = shared.lock();
        let Some(mut object) = inner.namespaces.remove(&name) else {
            return not_found("namespaces", &name);
        };
        inner
            .objects
            .retain(|(_, namespace, _), _| *namespace != name);
        let keys: Vec<_> = inner
            .pods
            .keys()
            .filter(|(namespace, _)| *namespace == name)
            .cloned()
            .collect();
        object["status"] = json!({"phase": "Terminating"});
        object["metadata"]["deletionTimestamp"] = json!(now());
        (object, keys)
    };
    let pods: Vec<_> = pods
        .iter()
        .filter_map(|(namespace, pod)| crate::server::remove_pod(&shared, namespace, pod))
        .collect();
    for pod in pods {
        crate::docker::remove_backing(&shared, &pod.backing).await;
    }
    axum::Json(object).into_response()
}

/// A namespaced object kind served here.
#[derive(Clone, Copy)]
struct Kind {
    /// `Secret`, `ConfigMap`.
    kind: &'static str,
    /// `secrets`, `configmaps`.
    plural: &'static str,
}

const SECRET: Kind = Kind {
    kind: "Secret",
    plural: "secrets",
};
const CONFIG_MAP: Kind = Kind {
    kind: "ConfigMap",
    plural: "configmaps",
};

async fn create_object(
    kind: Kind,
    headers: HeaderMap,
    shared: Shared_,
    namespace: String,
    body: axum::body::Bytes,
) -> Response {
    if let Err(response) = authorized(&shared, &headers) {
        return response;
    }
    if let Err(response) = namespace_exists(&shared, &namespace) {
        return response;
    }
    let (mut object, name) = match parse_body(&body, kind.kind) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    if let Err(message) = normalize(kind, &mut object) {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!("{} \"{name}\" is invalid: {message}", kind.kind),
            json!({"name": name, "kind": kind.kind}),
        );
    }
    let key = (kind.plural.to_owned(), namespace.clone(), name.clone());
    if shared.lock().objects.contains_key(&key) {
        return already_exists(kind.plural, &name);
    }
    stamp(&shared, &mut object, kind.kind, Some(&namespace));
    {
        let mut inner = shared.lock();
        inner.created_objects.push(object.clone());
        inner.objects.insert(key, object.clone());
    }
    (StatusCode::CREATED, axum::Json(object)).into_response()
}

/// Secrets: `stringData` folded into `data` (base64), `data` checked to be base64.
/// Config maps: `data` strings, `binaryData` checked to be base64.
fn normalize(kind: Kind, object: &mut Value) -> Result<(), String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let (encoded, plain) = if kind.kind == "Secret" {
        ("data", "stringData")
    } else {
        ("binaryData", "data")
    };
    if let Some(map) = object[encoded].as_object() {
        for (key, value) in map {
            let text = value
                .as_str()
                .ok_or(format!("{encoded}[{key}]: not a string"))?;
            engine
                .decode(text)
                .map_err(|_| format!("{encoded}[{key}]: illegal base64 data"))?;
        }
    }
    if let Some(map) = object[plain].as_object() {
        for (key, value) in map {
            value
                .as_str()
                .ok_or(format!("{plain}[{key}]: not a string"))?;
        }
    }
    if kind.kind == "Secret"
        && let Some(map) = object
            .as_object_mut()
            .and_then(|o| o.remove("stringData"))
            .and_then(|v| v.as_object().cloned())
    {
        if !object["data"].is_object() {
            object["data"] = json!({});
        }
        for (key, value) in map {
            object["data"][key] = json!(engine.encode(value.as_str().unwrap_or("")));
        }
    }
    Ok(())
}

/// The objects of `kind` in `namespace` whose labels pass the query's `labelSelector`.
fn list_objects(
    kind: Kind,
    headers: &HeaderMap,
    shared: &Shared,
    namespace: &str,
    query: Option<&str>,
) -> Response {
    if let Err(response) = authorized(shared, headers) {
        return response;
    }
    let selector = crate::server::query_pairs(query)
        .into_iter()
        .find(|(key, _)| key == "labelSelector")
        .map(|(_, value)| value)
        .unwrap_or_default();
    let inner = shared.lock();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((plural, ns, _), _)| plural == kind.plural && ns == namespace)
        .map(|(_, object)| object)
        .filter(|object| crate::server::selector_matches(&selector, &object["metadata"]["labels"]))
        .cloned()
        .collect();
    axum::Json(json!({
        "kind": format!("{}List", kind.kind),
        "apiVersion": "v1",
        "metadata": {"resourceVersion": inner.version()},
        "items": items,
    }))
    .into_response()
}

fn get_object(
    kind: Kind,
    headers: &HeaderMap,
    shared: &Shared,
    namespace: String,
    name: String,
) -> Response {
    if let Err(response) = authorized(shared, headers) {
        return response;
    }
    let key = (kind.plural.to_owned(), namespace, name.clone());
    match shared.lock().objects.get(&key) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => not_found(kind.plural, &name),
    }
}

fn delete_object(
    kind: Kind,
    headers: &HeaderMap,
    shared: &Shared,
    namespace: String,
    name: String,
) -> Response {
    if let Err(response) = authorized(shared, headers) {
        return response;
    }
    let key = (kind.plural.to_owned(), namespace, name.clone());
    match shared.lock().objects.remove(&key) {
        Some(object) => axum::Json(object).into_response(),
        None => not_found(kind.plural, &name),
    }
}

/// The files a secret or config map volume shows: key → content, limited to `items` (key →
/// path) when given. Errors say what the kubelet would (`secret "x" not found`).
pub(crate) fn volume_files(
    shared: &Shared,
    namespace: &str,
    volume: &Value,
) -> Option<Result<BTreeMap<String, Vec<u8>>, String>> {
    let engine = base64::engine::general_purpose::STANDARD;
    let (plural, name, source) = if let Some(secret) = volume.get("secret") {
        (
            "secrets",
            secret["secretName"].as_str().unwrap_or(""),
            secret,
        )
    } else if let Some(config_map) = volume.get("configMap") {
        (
            "configmaps",
            config_map["name"].as_str().unwrap_or(""),
            config_map,
        )
    } else {
        return None;
    };
    let object = shared
        .lock()
        .objects
        .get(&(plural.to_owned(), namespace.to_owned(), name.to_owned()))
        .cloned();
    let Some(object) = object else {
        let kind = if plural == "secrets" {
            "secret"
        } else {
            "configmap"
        };
        return Some(Err(format!("{kind} \"{name}\" not found")));
    };
    let mut all: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let (encoded, plain) = if plural == "secrets" {
        ("data", "")
    } else {
        ("binaryData", "data")
    };
    for (key, value) in object[encoded].as_object().into_iter().flatten() {
        if let Some(bytes) = value.as_str().and_then(|text| engine.decode(text).ok()) {
            all.insert(key.clone(), bytes);
        }
    }
    if !plain.is_empty() {
        for (key, value) in object[plain].as_object().into_iter().flatten() {
            all.insert(
                key.clone(),
                value.as_str().unwrap_or("").as_bytes().to_vec(),
            );
        }
    }
    let Some(items) = source["items"].as_array() else {
        return Some(Ok(all));
    };
    let mut files = BTreeMap::new();
    for item in items {
        let key = item["key"].as_str().unwrap_or("");
        let path = item["path"].as_str().unwrap_or("");
        let Some(content) = all.get(key) else {
            return Some(Err(format!(
                "couldn't find key {key} in {} {namespace}/{name}",
                if plural == "secrets" {
                    "Secret"
                } else {
                    "ConfigMap"
                }
            )));
        };
        files.insert(path.to_owned(), content.clone());
    }
    Some(Ok(files))
}
