//! `[[runners.kubernetes.pod_spec]]`: patches applied to the generated pod spec, in order, as
//! the official runner applies them (with `FF_USE_ADVANCED_POD_SPEC_CONFIGURATION`):
//!
//! - `patch` (inline) or `patch_path` (a file), YAML or JSON, never both;
//! - `patch_type = "json"`: an RFC 6902 JSON patch;
//! - `patch_type = "merge"`: an RFC 7386 JSON merge patch;
//! - `patch_type = "strategic"` (default): a Kubernetes strategic merge patch, maps merged,
//!   `null` deleting, and the PodSpec lists the API declares with a merge key (containers,
//!   initContainers, volumes, imagePullSecrets by `name`; volumeMounts by `mountPath`; env by
//!   `name`; ports by `containerPort`; hostAliases by `ip`; …) merged element by element, other
//!   lists replaced; `$patch: delete` on an element removes it, `$patch: replace` on a map or
//!   in a list replaces instead of merging, `$retainKeys` is refused.

use serde_json::{Map, Value};

use crate::KubernetesError;
use crate::spec::PodSpecPatch;

/// Patch files are read up to this size.
const MAX_PATCH_BYTES: u64 = 1 << 20;

fn invalid(name: &str, reason: impl std::fmt::Display) -> KubernetesError {
    KubernetesError::InvalidOption {
        key: "pod_spec",
        reason: format!("patch `{name}`: {reason}"),
    }
}

/// A patch ready to apply: its kind and JSON body.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadedPatch {
    Json(json_patch::Patch),
    Merge(Value),
    Strategic(Value),
}

/// Reads and parses a `[[pod_spec]]` entry (at start, so mistakes stop the runner).
pub fn load(spec: &PodSpecPatch) -> Result<LoadedPatch, KubernetesError> {
    let name = spec.name.as_str();
    let text = match (spec.patch.is_empty(), spec.patch_path.is_empty()) {
        (false, false) => {
            return Err(invalid(name, "sets both `patch` and `patch_path`"));
        }
        (true, true) => return Err(invalid(name, "sets neither `patch` nor `patch_path`")),
        (false, true) => spec.patch.clone(),
        (true, false) => {
            use std::io::Read;
            let file = std::fs::File::open(&spec.patch_path).map_err(|error| {
                invalid(name, format!("cannot read {}: {error}", spec.patch_path))
            })?;
            let mut text = String::new();
            file.take(MAX_PATCH_BYTES + 1)
                .read_to_string(&mut text)
                .map_err(|error| {
                    invalid(name, format!("cannot read {}: {error}", spec.patch_path))
                })?;
            if text.len() as u64 > MAX_PATCH_BYTES {
                return Err(invalid(
                    name,
                    format!("{} is larger than 1 MiB", spec.patch_path),
                ));
            }
            text
        }
    };
    let value: Value = serde_saphyr::from_str(&text)
        .map_err(|error| invalid(name, format!("not YAML or JSON: {error}")))?;
    match spec.patch_type.as_str() {
        "json" => serde_json::from_value(value)
            .map(LoadedPatch::Json)
            .map_err(|error| invalid(name, format!("not a JSON patch (RFC 6902): {error}"))),
        "merge" => Ok(LoadedPatch::Merge(value)),
        "" | "strategic" => {
            check_directives(&value).map_err(|reason| invalid(name, reason))?;
            Ok(LoadedPatch::Strategic(value))
        }
        other => Err(invalid(
            name,
            format!("unsupported patch_type `{other}` (strategic, merge, json)"),
        )),
    }
}

/// Refuses strategic-merge directives this implementation does not apply.
fn check_directives(value: &Value) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                if key == "$retainKeys" || key.starts_with("$setElementOrder/") {
                    return Err(format!(
                        "the strategic merge directive `{key}` is not supported"
                    ));
                }
                if key.starts_with("$deleteFromPrimitiveList/") {
                    return Err(format!(
                        "the strategic merge directive `{key}` is not supported"
                    ));
                }
                if key == "$patch" && !matches!(item.as_str(), Some("replace" | "delete" | "merge"))
                {
                    return Err(format!("unknown `$patch: {item}`"));
                }
                check_directives(item)?;
            }
            Ok(())
        }
        Value::Array(list) => list.iter().try_for_each(check_directives),
        _ => Ok(()),
    }
}

/// Applies `patch` to the pod spec `original` (JSON).
pub fn apply(original: &mut Value, patch: &LoadedPatch, name: &str) -> Result<(), KubernetesError> {
    match patch {
        LoadedPatch::Json(patch) => json_patch::patch(original, patch)
            .map_err(|error| invalid(name, format!("cannot be applied: {error}"))),
        LoadedPatch::Merge(patch) => {
            json_patch::merge(original, patch);
            Ok(())
        }
        LoadedPatch::Strategic(patch) => {
            strategic_merge(original, patch, "");
            Ok(())
        }
    }
}

/// The merge key of a PodSpec list field (by field name; the names are unique in PodSpec).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "env"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

fn directive(value: &Value) -> Option<&str> {
    value.get("$patch").and_then(Value::as_str)
}

fn without_directive(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut map = map.clone();
            map.remove("$patch");
            Value::Object(map)
        }
        other => other.clone(),
    }
}

/// Kubernetes strategic merge of `patch` into `target`; `field` is the key `target` sits under.
pub fn strategic_merge(target: &mut Value, patch: &Value, field: &str) {
    match patch {
        Value::Object(patch_map) => {
            if directive(patch) == Some("replace") {
                *target = without_directive(patch);
                return;
            }
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let Value::Object(target_map) = target else {
                return;
            };
            for (key, value) in patch_map {
                if key == "$patch" {
                    continue;
                }
                match value {
                    Value::Null => {
                        target_map.remove(key);
                    }
                    Value::Array(list) => {
                        let existing = target_map.entry(key.clone()).or_insert(Value::Null);
                        merge_list(existing, list, key);
                    }
                    Value::Object(_) => {
                        let existing = target_map.entry(key.clone()).or_insert(Value::Null);
                        strategic_merge(existing, value, key);
                    }
                    other => {
                        target_map.insert(key.clone(), other.clone());
                    }
                }
            }
        }
        other => {
            let _ = field;
            *target = other.clone();
        }
    }
}

fn merge_list(target: &mut Value, patch: &[Value], field: &str) {
    let replace = patch.iter().any(|item| directive(item) == Some("replace"));
    let Some(key) = merge_key(field).filter(|_| !replace) else {
        *target = Value::Array(
            patch
                .iter()
                .filter(|item| directive(item).is_none())
                .cloned()
                .collect(),
        );
        return;
    };
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let Value::Array(list) = target else {
        return;
    };
    for item in patch {
        let id = item.get(key);
        let position = id.and_then(|id| {
            list.iter()
                .position(|existing| existing.get(key) == Some(id))
        });
        match (directive(item), position) {
            (Some("delete"), Some(index)) => {
                list.remove(index);
            }
            (Some("delete"), None) => {}
            (_, Some(index)) => strategic_merge(&mut list[index], item, field),
            (_, None) => list.push(without_directive(item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patch(patch_type: &str, text: &str) -> LoadedPatch {
        load(&PodSpecPatch {
            name: "test".to_owned(),
            patch: text.to_owned(),
            patch_type: patch_type.to_owned(),
            ..PodSpecPatch::default()
        })
        .unwrap()
    }

    fn spec() -> Value {
        json!({
            "containers": [
                {"name": "build", "image": "alpine", "env": [{"name": "A", "value": "1"}],
                 "volumeMounts": [{"name": "repo", "mountPath": "/builds"}]},
                {"name": "helper", "image": "helper"}
            ],
            "volumes": [{"name": "repo", "emptyDir": {}}],
            "tolerations": [{"key": "a", "operator": "Exists"}],
            "nodeSelector": {"os": "linux"}
        })
    }

    #[test]
    fn strategic_merges_containers_by_name_and_replaces_plain_lists() {
        let mut value = spec();
        let loaded = patch(
            "strategic",
            "containers:\n  - name: build\n    env:\n      - name: B\n        value: \"2\"\n    volumeMounts:\n      - name: cache\n        mountPath: /cache\n  - name: sidecar\n    image: busybox\nvolumes:\n  - name: cache\n    emptyDir: {}\ntolerations:\n  - key: b\n    operator: Exists\nnodeSelector:\n  os: null\n  disk: ssd\n",
        );
        apply(&mut value, &loaded, "test").unwrap();
        assert_eq!(
            value,
            json!({
                "containers": [
                    {"name": "build", "image": "alpine",
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                     "volumeMounts": [{"name": "repo", "mountPath": "/builds"}, {"name": "cache", "mountPath": "/cache"}]},
                    {"name": "helper", "image": "helper"},
                    {"name": "sidecar", "image": "busybox"}
                ],
                "volumes": [{"name": "repo", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}],
                "tolerations": [{"key": "b", "operator": "Exists"}],
                "nodeSelector": {"disk": "ssd"}
            })
        );
    }

    #[test]
    fn strategic_directives_delete_and_replace() {
        let mut value = spec();
        let loaded = patch(
            "strategic",
            r#"{"containers": [{"name": "helper", "$patch": "delete"}], "volumes": [{"name": "x", "emptyDir": {}}, {"$patch": "replace"}]}"#,
        );
        apply(&mut value, &loaded, "test").unwrap();
        assert_eq!(value["containers"].as_array().unwrap().len(), 1);
        assert_eq!(value["volumes"], json!([{"name": "x", "emptyDir": {}}]));
        let retain = load(&PodSpecPatch {
            name: "r".to_owned(),
            patch: "{\"$retainKeys\": [\"a\"]}".to_owned(),
            ..PodSpecPatch::default()
        });
        assert!(retain.is_err());
    }

    #[test]
    fn merge_patches_replace_lists_and_delete_nulls() {
        let mut value = spec();
        let loaded = patch(
            "merge",
            r#"{"containers": [{"name": "only"}], "nodeSelector": null, "hostname": "h"}"#,
        );
        apply(&mut value, &loaded, "test").unwrap();
        assert_eq!(value["containers"], json!([{"name": "only"}]));
        assert!(value.get("nodeSelector").is_none());
        assert_eq!(value["hostname"], json!("h"));
    }

    #[test]
    fn json_patches_follow_rfc_6902() {
        let mut value = spec();
        let loaded = patch(
            "json",
            r#"[{"op": "add", "path": "/containers/0/args", "value": ["x"]}, {"op": "replace", "path": "/containers/1/image", "value": "other"}]"#,
        );
        apply(&mut value, &loaded, "test").unwrap();
        assert_eq!(value["containers"][0]["args"], json!(["x"]));
        assert_eq!(value["containers"][1]["image"], json!("other"));
        let failing = patch("json", r#"[{"op": "remove", "path": "/nope"}]"#);
        let error = apply(&mut value, &failing, "test").unwrap_err();
        assert!(error.to_string().contains("patch `test`"), "{error}");
    }

    #[test]
    fn bad_patches_are_refused_when_loaded() {
        let both = load(&PodSpecPatch {
            name: "both".to_owned(),
            patch: "{}".to_owned(),
            patch_path: "/x".to_owned(),
            ..PodSpecPatch::default()
        })
        .unwrap_err();
        assert!(both.to_string().contains("both"), "{both}");
        let kind = load(&PodSpecPatch {
            name: "k".to_owned(),
            patch: "{}".to_owned(),
            patch_type: "xml".to_owned(),
            ..PodSpecPatch::default()
        })
        .unwrap_err();
        assert!(kind.to_string().contains("xml"), "{kind}");
    }
}
