//! Job variables that overwrite `[runners.kubernetes]` settings, where the configuration
//! allows it, with the official rules (`overwrites.go`):
//!
//! - `KUBERNETES_NAMESPACE_OVERWRITE`, `KUBERNETES_SERVICE_ACCOUNT_OVERWRITE`: used when they
//!   match `namespace_overwrite_allowed` / `service_account_overwrite_allowed` (an unset or
//!   empty pattern disables the overwrite; a value that does not match fails the job);
//! - `KUBERNETES_BEARER_TOKEN`: used when `bearer_token_overwrite_allowed` is true;
//! - `KUBERNETES_POD_LABELS_*`, `KUBERNETES_POD_ANNOTATIONS_*`, `KUBERNETES_NODE_SELECTOR_*`
//!   (`key=value`) and `KUBERNETES_NODE_TOLERATIONS_*` (`key[=value]:effect`): added to the
//!   configured map when they match the `*_overwrite_allowed` pattern;
//! - `KUBERNETES_{,HELPER_,SERVICE_,POD_}{CPU,MEMORY,EPHEMERAL_STORAGE}_{LIMIT,REQUEST}`: used
//!   when the matching `*_overwrite_max_allowed` is set and the value is not above it (a value
//!   above it fails the job); a service's own variables overwrite the service resources of that
//!   service only.
//!
//! Each overwrite is announced in the job log as the official runner does; the bearer token
//! is never printed.

use std::collections::BTreeMap;

use runnel_types::{JobSpec, Variable};

use crate::KubernetesError;
use crate::options::{KubernetesOptions, ResourceGroup, Resources, quantity_value};

pub const NAMESPACE_OVERWRITE: &str = "KUBERNETES_NAMESPACE_OVERWRITE";
pub const SERVICE_ACCOUNT_OVERWRITE: &str = "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE";
pub const BEARER_TOKEN_OVERWRITE: &str = "KUBERNETES_BEARER_TOKEN";
pub const POD_LABELS_PREFIX: &str = "KUBERNETES_POD_LABELS_";
pub const POD_ANNOTATIONS_PREFIX: &str = "KUBERNETES_POD_ANNOTATIONS_";
pub const NODE_SELECTOR_PREFIX: &str = "KUBERNETES_NODE_SELECTOR_";
pub const NODE_TOLERATIONS_PREFIX: &str = "KUBERNETES_NODE_TOLERATIONS_";

/// The settings of one job after its overwrites.
#[derive(Clone, Debug, Default)]
pub struct Overwrites {
    /// The namespace (configured or overwritten; empty: the client's default).
    pub namespace: String,
    pub service_account: Option<String>,
    /// A job-provided bearer token (only when allowed).
    pub bearer_token: Option<String>,
    pub pod_labels: BTreeMap<String, String>,
    pub pod_annotations: BTreeMap<String, String>,
    pub node_selector: BTreeMap<String, String>,
    /// `key[=value]` → effect.
    pub node_tolerations: BTreeMap<String, String>,
    pub build: Resources,
    pub helper: Resources,
    pub service: Resources,
    pub pod: Resources,
    /// Per service index, resources from the service's own variables.
    pub services: BTreeMap<usize, Resources>,
    /// Lines for the job log.
    pub log: Vec<String>,
}

impl Overwrites {
    /// The resources of the service at `index`.
    pub fn service_resources(&self, index: usize) -> &Resources {
        self.services.get(&index).unwrap_or(&self.service)
    }
}

fn value(variables: &[Variable], name: &str) -> String {
    variables
        .iter()
        .rev()
        .find(|v| v.key == name)
        .map(|v| v.value.clone())
        .unwrap_or_default()
}

fn pattern_matches(pattern: &str, value: &str) -> Result<(), String> {
    let regex = regex::Regex::new(pattern).map_err(|error| error.to_string())?;
    if regex.is_match(value) {
        Ok(())
    } else {
        Err(format!(
            "provided value {value:?} does not match {pattern:?}"
        ))
    }
}

/// A single-value overwrite.
fn single(
    field: &str,
    configured: Option<&str>,
    pattern: Option<&str>,
    overwrite: &str,
    log: &mut Vec<String>,
) -> Result<Option<String>, KubernetesError> {
    let configured = configured.map(str::to_owned);
    let Some(pattern) = pattern.filter(|p| !p.is_empty()) else {
        return Ok(configured);
    };
    if overwrite.is_empty() {
        return Ok(configured);
    }
    pattern_matches(pattern, overwrite).map_err(|message| KubernetesError::Overwrite {
        what: format!("invalid {field} overwrite"),
        message,
    })?;
    let shown = if field == "BearerToken" {
        "XXXXXXXX..."
    } else {
        overwrite
    };
    log.push(format!("{field:?} overwritten with {shown:?}"));
    Ok(Some(overwrite.to_owned()))
}

/// A map overwrite from every variable with `prefix`.
fn map(
    field: &str,
    configured: &BTreeMap<String, String>,
    pattern: Option<&str>,
    variables: &[Variable],
    prefix: &str,
    split: fn(&str) -> Result<(String, String), String>,
    log: &mut Vec<String>,
) -> Result<BTreeMap<String, String>, KubernetesError> {
    let mut values = configured.clone();
    let Some(pattern) = pattern.filter(|p| !p.is_empty()) else {
        return Ok(values);
    };
    for variable in variables.iter().filter(|v| v.key.starts_with(prefix)) {
        let error = |message| KubernetesError::Overwrite {
            what: format!("invalid {field} overwrite ({})", variable.key),
            message,
        };
        pattern_matches(pattern, &variable.value).map_err(error)?;
        let (key, value) = split(&variable.value).map_err(error)?;
        log.push(format!("{field:?} {key:?} overwritten with {value:?}"));
        values.insert(key, value);
    }
    Ok(values)
}

fn split_map(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("provided value {text:?} does not match \"k=v\""))
}

fn split_toleration(text: &str) -> Result<(String, String), String> {
    Ok(match text.split_once(':') {
        Some((key, effect)) => (key.to_owned(), effect.to_owned()),
        None => (text.to_owned(), String::new()),
    })
}

/// One resource value after its overwrite.
fn resource(
    field: &str,
    configured: Option<&str>,
    max: Option<&str>,
    overwrite: &str,
    log: &mut Vec<String>,
) -> Result<Option<String>, String> {
    let configured = configured.map(str::to_owned);
    let Some(max) = max else {
        return Ok(configured);
    };
    if overwrite.is_empty() {
        return Ok(configured);
    }
    let max_value =
        quantity_value(max).ok_or_else(|| format!("parsing resource limit: {max:?}"))?;
    let value = quantity_value(overwrite)
        .ok_or_else(|| format!("parsing resource limit: {overwrite:?} is not a quantity"))?;
    if value > max_value {
        return Err(format!(
            "the resource {field:?} requested {overwrite:?} is higher than limit allowed {max:?}"
        ));
    }
    log.push(format!("{field:?} overwritten with {overwrite:?}"));
    Ok(Some(overwrite.to_owned()))
}

fn group_name(group: ResourceGroup) -> &'static str {
    match group {
        ResourceGroup::Build => "build",
        ResourceGroup::Helper => "helper",
        ResourceGroup::Service => "service",
        ResourceGroup::Pod => "Pod",
    }
}

/// Evaluates the overwrites of `job` against `options`.
pub fn evaluate(options: &KubernetesOptions, job: &JobSpec) -> Result<Overwrites, KubernetesError> {
    let variables = expanded(job);
    let mut log = Vec::new();
    let namespace = single(
        "Namespace",
        options.namespace.as_deref(),
        options.namespace_overwrite_allowed.as_deref(),
        &value(&variables, NAMESPACE_OVERWRITE),
        &mut log,
    )?
    .unwrap_or_default();
    let service_account = single(
        "ServiceAccount",
        options.service_account.as_deref(),
        options.service_account_overwrite_allowed.as_deref(),
        &value(&variables, SERVICE_ACCOUNT_OVERWRITE),
        &mut log,
    )?
    .filter(|s| !s.is_empty());
    let token = single(
        "BearerToken",
        options.bearer_token.as_deref(),
        options.bearer_token_overwrite_allowed.then_some(".+"),
        &value(&variables, BEARER_TOKEN_OVERWRITE),
        &mut log,
    )?;
    let bearer_token = token.filter(|t| Some(t) != options.bearer_token.as_ref());
    let pod_labels = map(
        "PodLabels",
        &options.pod_labels,
        options.pod_labels_overwrite_allowed.as_deref(),
        &variables,
        POD_LABELS_PREFIX,
        split_map,
        &mut log,
    )?;
    let pod_annotations = map(
        "PodAnnotations",
        &options.pod_annotations,
        options.pod_annotations_overwrite_allowed.as_deref(),
        &variables,
        POD_ANNOTATIONS_PREFIX,
        split_map,
        &mut log,
    )?;
    let node_selector = map(
        "NodeSelector",
        &options.node_selector,
        options.node_selector_overwrite_allowed.as_deref(),
        &variables,
        NODE_SELECTOR_PREFIX,
        split_map,
        &mut log,
    )?;
    let node_tolerations = map(
        "NodeTolerations",
        &options.node_tolerations,
        options.node_tolerations_overwrite_allowed.as_deref(),
        &variables,
        NODE_TOLERATIONS_PREFIX,
        split_toleration,
        &mut log,
    )?;
    let mut overwrites = Overwrites {
        namespace,
        service_account,
        bearer_token,
        pod_labels,
        pod_annotations,
        node_selector,
        node_tolerations,
        ..Overwrites::default()
    };
    let settings = options.resource_settings();
    for setting in &settings {
        let chosen = resource(
            setting.field,
            setting.value,
            setting.max,
            &value(&variables, setting.variable),
            &mut log,
        )
        .map_err(|message| KubernetesError::Overwrite {
            what: format!(
                "invalid {} {} specified",
                group_name(setting.group),
                if setting.limit { "limits" } else { "requests" }
            ),
            message,
        })?;
        let target = match setting.group {
            ResourceGroup::Build => &mut overwrites.build,
            ResourceGroup::Helper => &mut overwrites.helper,
            ResourceGroup::Service => &mut overwrites.service,
            ResourceGroup::Pod => &mut overwrites.pod,
        };
        if let Some(chosen) = chosen.filter(|v| !v.is_empty()) {
            let list = if setting.limit {
                &mut target.limits
            } else {
                &mut target.requests
            };
            list.insert(setting.resource.to_owned(), chosen);
        }
    }
    // A service's own variables overwrite the (already overwritten) service resources, for
    // that service; limits and requests each as a whole, as official.
    for (index, service) in job.services.iter().enumerate() {
        let mut own = overwrites.service.clone();
        let mut changed = false;
        for limit in [true, false] {
            let mut list = BTreeMap::new();
            let mut any = false;
            for setting in settings
                .iter()
                .filter(|s| s.group == ResourceGroup::Service && s.limit == limit)
            {
                let base = if limit {
                    &overwrites.service.limits
                } else {
                    &overwrites.service.requests
                };
                let overwrite = value(&service.variables, setting.variable);
                any |= !overwrite.is_empty() && setting.max.is_some();
                let chosen = resource(
                    setting.field,
                    base.get(setting.resource).map(String::as_str),
                    setting.max,
                    &overwrite,
                    &mut log,
                )
                .map_err(|message| KubernetesError::Overwrite {
                    what: format!(
                        "invalid service {} specified",
                        if limit { "limits" } else { "requests" }
                    ),
                    message,
                })?;
                if let Some(chosen) = chosen {
                    list.insert(setting.resource.to_owned(), chosen);
                }
            }
            if any {
                changed = true;
                if limit {
                    own.limits = list;
                } else {
                    own.requests = list;
                }
            }
        }
        if changed {
            overwrites.services.insert(index, own);
        }
    }
    overwrites.log = log;
    Ok(overwrites)
}

/// The job's variables with references expanded, as the official runner expands them first.
fn expanded(job: &JobSpec) -> Vec<Variable> {
    job.variables
        .iter()
        .map(|variable| {
            if variable.raw {
                return variable.clone();
            }
            let mut variable = variable.clone();
            variable.value = runnel_types::expand(&variable.value, |name| {
                job.variable(name)
                    .map(|v| v.value.clone())
                    .unwrap_or_default()
            });
            variable
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> KubernetesOptions {
        KubernetesOptions::from_raw(&runnel_config::RawTable::from(
            text.parse::<toml::Table>().unwrap(),
        ))
        .unwrap()
    }

    fn var(key: &str, value: &str) -> Variable {
        Variable {
            key: key.to_owned(),
            value: value.to_owned(),
            public: true,
            file: false,
            masked: false,
            raw: false,
            internal: false,
        }
    }

    fn job(variables: &[(&str, &str)]) -> JobSpec {
        JobSpec {
            variables: variables.iter().map(|(k, v)| var(k, v)).collect(),
            ..JobSpec::default()
        }
    }

    // Facts of the official overwrites_test.go: which overwrites apply and which fail.

    #[test]
    fn namespace_and_service_account_need_a_matching_pattern() {
        let opts = options("namespace = \"default\"\nservice_account = \"sa\"\n");
        let o = evaluate(
            &opts,
            &job(&[
                (NAMESPACE_OVERWRITE, "other"),
                (SERVICE_ACCOUNT_OVERWRITE, "x"),
            ]),
        )
        .unwrap();
        assert_eq!(o.namespace, "default", "no pattern: no overwrite");
        assert_eq!(o.service_account.as_deref(), Some("sa"));

        let opts = options(
            "namespace = \"default\"\nnamespace_overwrite_allowed = \"ci-.*\"\nservice_account_overwrite_allowed = \"^build-.*$\"\n",
        );
        let o = evaluate(
            &opts,
            &job(&[
                (NAMESPACE_OVERWRITE, "ci-team"),
                (SERVICE_ACCOUNT_OVERWRITE, "build-x"),
            ]),
        )
        .unwrap();
        assert_eq!(o.namespace, "ci-team");
        assert_eq!(o.service_account.as_deref(), Some("build-x"));
        assert_eq!(
            o.log,
            [
                "\"Namespace\" overwritten with \"ci-team\"",
                "\"ServiceAccount\" overwritten with \"build-x\""
            ]
        );
        let error = evaluate(&opts, &job(&[(NAMESPACE_OVERWRITE, "prod")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid Namespace overwrite: provided value \"prod\" does not match \"ci-.*\""
        );
        let o = evaluate(&opts, &job(&[])).unwrap();
        assert_eq!(o.namespace, "default", "no variable: the configured value");
    }

    #[test]
    fn bearer_token_overwrite_is_boolean_and_never_logged() {
        let opts = options("bearer_token = \"configured\"\n");
        let o = evaluate(&opts, &job(&[(BEARER_TOKEN_OVERWRITE, "job-token")])).unwrap();
        assert_eq!(o.bearer_token, None);
        let opts =
            options("bearer_token = \"configured\"\nbearer_token_overwrite_allowed = true\n");
        let o = evaluate(&opts, &job(&[(BEARER_TOKEN_OVERWRITE, "job-token")])).unwrap();
        assert_eq!(o.bearer_token.as_deref(), Some("job-token"));
        assert!(!o.log.join("\n").contains("job-token"), "{:?}", o.log);
    }

    #[test]
    fn map_overwrites_add_matching_entries() {
        let opts = options(
            "pod_labels_overwrite_allowed = \".*\"\nnode_selector_overwrite_allowed = \"kubernetes.io/arch=.*\"\nnode_tolerations_overwrite_allowed = \".*\"\n[pod_labels]\nteam = \"a\"\n[node_selector]\n\"kubernetes.io/os\" = \"linux\"\n[node_tolerations]\n\"node-role=ci\" = \"NoSchedule\"\n",
        );
        let o = evaluate(
            &opts,
            &job(&[
                ("KUBERNETES_POD_LABELS_1", "team=b"),
                ("KUBERNETES_POD_LABELS_2", "env=ci"),
                ("KUBERNETES_NODE_SELECTOR_ARCH", "kubernetes.io/arch=arm64"),
                ("KUBERNETES_NODE_TOLERATIONS_1", "gpu=true:NoExecute"),
                ("KUBERNETES_NODE_TOLERATIONS_2", "spot"),
            ]),
        )
        .unwrap();
        assert_eq!(o.pod_labels["team"], "b");
        assert_eq!(o.pod_labels["env"], "ci");
        assert_eq!(o.node_selector["kubernetes.io/arch"], "arm64");
        assert_eq!(o.node_selector["kubernetes.io/os"], "linux");
        assert_eq!(o.node_tolerations["gpu=true"], "NoExecute");
        assert_eq!(o.node_tolerations["spot"], "");
        assert_eq!(o.node_tolerations["node-role=ci"], "NoSchedule");
        let error = evaluate(
            &opts,
            &job(&[("KUBERNETES_NODE_SELECTOR_OS", "kubernetes.io/os=windows")]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("does not match"), "{error}");
        let error = evaluate(&opts, &job(&[("KUBERNETES_POD_LABELS_X", "novalue")])).unwrap_err();
        assert!(error.to_string().contains("\"k=v\""), "{error}");
    }

    #[test]
    fn resource_overwrites_are_bounded_by_their_maximum() {
        let opts = options(
            "cpu_limit = \"1\"\ncpu_limit_overwrite_max_allowed = \"2\"\nmemory_request = \"128Mi\"\nmemory_request_overwrite_max_allowed = \"1Gi\"\nhelper_cpu_request = \"100m\"\nservice_memory_limit = \"64Mi\"\nservice_memory_limit_overwrite_max_allowed = \"512Mi\"\npod_cpu_limit_overwrite_max_allowed = \"4\"\n",
        );
        let o = evaluate(
            &opts,
            &job(&[
                ("KUBERNETES_CPU_LIMIT", "1500m"),
                ("KUBERNETES_MEMORY_REQUEST", "1Gi"),
                ("KUBERNETES_HELPER_CPU_REQUEST", "3"),
                ("KUBERNETES_POD_CPU_LIMIT", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(o.build.limits["cpu"], "1500m");
        assert_eq!(o.build.requests["memory"], "1Gi");
        assert_eq!(o.helper.requests["cpu"], "100m", "no maximum: no overwrite");
        assert_eq!(o.pod.limits["cpu"], "3");
        let error = evaluate(&opts, &job(&[("KUBERNETES_CPU_LIMIT", "2.5")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid build limits specified: the resource \"CPULimit\" requested \"2.5\" is higher than limit allowed \"2\""
        );
        let error = evaluate(&opts, &job(&[("KUBERNETES_MEMORY_REQUEST", "2G")])).unwrap_err();
        assert!(error.to_string().contains("MemoryRequest"), "{error}");

        let mut with_service = job(&[]);
        with_service.services = vec![
            runnel_types::ImageSpec {
                name: "db".to_owned(),
                variables: vec![var("KUBERNETES_SERVICE_MEMORY_LIMIT", "256Mi")],
                ..runnel_types::ImageSpec::default()
            },
            runnel_types::ImageSpec {
                name: "cache".to_owned(),
                ..runnel_types::ImageSpec::default()
            },
        ];
        let o = evaluate(&opts, &with_service).unwrap();
        assert_eq!(o.service_resources(0).limits["memory"], "256Mi");
        assert_eq!(o.service_resources(1).limits["memory"], "64Mi");
    }

    #[test]
    fn quantities_compare_across_units() {
        assert_eq!(quantity_value("500m"), Some(0.5));
        assert_eq!(quantity_value("1Ki"), Some(1024.0));
        assert!(quantity_value("1G").unwrap() < quantity_value("1Gi").unwrap());
        assert_eq!(quantity_value("1e3"), Some(1000.0));
        assert_eq!(quantity_value("x"), None);
    }
}
