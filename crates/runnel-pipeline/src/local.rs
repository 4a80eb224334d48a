//! The predefined variables GitLab would give a pipeline, computed from facts about a local
//! checkout ([`LocalRun`]), so that `rules`, `only`/`except` and `workflow:rules` see what they
//! would see on the server.
//!
//! It does not read git: the caller (`runnel exec`) gathers branch, tag, sha and message and
//! passes them in. `GITLAB_CI` is `false` (the convention gitlab-ci-local set, so that jobs can
//! tell a local run with `$GITLAB_CI == "false"`); `CI` is `true`.

use runnel_types::Variable;

/// Facts about the local run that GitLab would know about a pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalRun {
    /// The checked-out branch; ignored when `tag` is set.
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub sha: String,
    pub message: String,
    pub author: String,
    /// `CI_DEFAULT_BRANCH`; `main` when empty.
    pub default_branch: String,
    /// `CI_PIPELINE_SOURCE`; `push` when empty.
    pub source: String,
    /// `group/subgroup/project`.
    pub project_path: String,
    /// The GitLab instance the project lives on (`https://gitlab.example.com[:port]`, from the
    /// `origin` remote); empty when unknown. It gives `CI_SERVER_*`, `CI_PROJECT_URL`,
    /// `CI_API_V4_URL`, `CI_REGISTRY*` and (on gitlab.com) `CI_PAGES_*`, so that rules such as
    /// `$CI_SERVER_HOST == "gitlab.gnome.org"` see what they would see there.
    pub server_url: String,
    pub pipeline_id: u64,
}

/// GitLab's `*_SLUG` rule: lowercase, every character outside `a-z0-9` becomes `-`, at most 63
/// bytes, no leading or trailing `-`.
pub fn slug(text: &str) -> String {
    let mapped: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped.trim_matches('-').to_owned()
}

impl LocalRun {
    /// The predefined variables, in a stable order.
    pub fn predefined_variables(&self) -> Vec<Variable> {
        let mut vars = Vec::new();
        let mut add = |k: &str, v: &str| vars.push(Variable::new(k, v));
        add("CI", "true");
        add("GITLAB_CI", "false");
        add(
            "CI_PIPELINE_SOURCE",
            if self.source.is_empty() {
                "push"
            } else {
                &self.source
            },
        );
        let pipeline_id = self.pipeline_id.to_string();
        add("CI_PIPELINE_ID", &pipeline_id);
        add("CI_PIPELINE_IID", &pipeline_id);
        add(
            "CI_DEFAULT_BRANCH",
            if self.default_branch.is_empty() {
                "main"
            } else {
                &self.default_branch
            },
        );
        let ref_name = match (&self.tag, &self.branch) {
            (Some(tag), _) => {
                add("CI_COMMIT_TAG", tag);
                add("CI_COMMIT_TAG_MESSAGE", "");
                tag.clone()
            }
            (None, Some(branch)) => {
                add("CI_COMMIT_BRANCH", branch);
                branch.clone()
            }
            (None, None) => String::new(),
        };
        add("CI_COMMIT_REF_NAME", &ref_name);
        add("CI_COMMIT_REF_SLUG", &slug(&ref_name));
        add("CI_COMMIT_SHA", &self.sha);
        add(
            "CI_COMMIT_SHORT_SHA",
            self.sha.get(..8).unwrap_or(&self.sha),
        );
        add(
            "CI_COMMIT_BEFORE_SHA",
            "0000000000000000000000000000000000000000",
        );
        add("CI_COMMIT_MESSAGE", &self.message);
        let (title, description) = self.message.split_once('\n').unwrap_or((&self.message, ""));
        add("CI_COMMIT_TITLE", title.trim_end());
        add(
            "CI_COMMIT_DESCRIPTION",
            description.trim_start_matches('\n'),
        );
        add("CI_COMMIT_AUTHOR", &self.author);
        if !self.project_path.is_empty() {
            let (namespace, name) = self
                .project_path
                .rsplit_once('/')
                .unwrap_or(("", &self.project_path));
            add("CI_PROJECT_PATH", &self.project_path);
            add("CI_PROJECT_PATH_SLUG", &slug(&self.project_path));
            add("CI_PROJECT_NAMESPACE", namespace);
            add(
                "CI_PROJECT_ROOT_NAMESPACE",
                self.project_path.split('/').next().unwrap_or_default(),
            );
            add("CI_PROJECT_NAME", name);
        }
        self.server_variables(&mut add);
        vars
    }

    /// The variables GitLab derives from its own URL.
    fn server_variables(&self, add: &mut dyn FnMut(&str, &str)) {
        let Some((protocol, host_port)) = self.server_url.split_once("://") else {
            return;
        };
        let host_port = host_port.trim_end_matches('/');
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, port.to_owned()),
            None => (
                host_port,
                if protocol == "http" { "80" } else { "443" }.to_owned(),
            ),
        };
        let url = format!("{protocol}://{host_port}");
        add("CI_SERVER_URL", &url);
        add("CI_SERVER_HOST", host);
        add("CI_SERVER_PORT", &port);
        add("CI_SERVER_PROTOCOL", protocol);
        add("CI_SERVER_FQDN", host_port);
        add("CI_SERVER_NAME", "GitLab");
        add("CI_API_V4_URL", &format!("{url}/api/v4"));
        add("CI_API_GRAPHQL_URL", &format!("{url}/api/graphql"));
        if self.project_path.is_empty() {
            return;
        }
        add("CI_PROJECT_URL", &format!("{url}/{}", self.project_path));
        // GitLab.com's registry; self-managed instances usually follow the same pattern
        // (override with `--variable CI_REGISTRY=… --variable CI_REGISTRY_IMAGE=…`).
        let registry = format!("registry.{host}");
        add(
            "CI_REGISTRY_IMAGE",
            &format!("{registry}/{}", self.project_path.to_lowercase()),
        );
        add("CI_REGISTRY", &registry);
        if host == "gitlab.com" {
            let (top, rest) = self
                .project_path
                .split_once('/')
                .unwrap_or((&self.project_path, ""));
            let domain = "gitlab.io";
            add("CI_PAGES_DOMAIN", domain);
            add(
                "CI_PAGES_URL",
                &format!("https://{}.{domain}/{rest}", top.to_lowercase()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_gitlab() {
        assert_eq!(slug("Feature/ABC_123"), "feature-abc-123");
        assert_eq!(slug("-v1.0-"), "v1-0");
        assert_eq!(slug(&"a".repeat(80)).len(), 63);
        assert_eq!(slug(&format!("{}/x", "a".repeat(62))), "a".repeat(62));
    }

    #[test]
    fn server_variables_follow_the_origin() {
        let run = LocalRun {
            project_path: "Group/Sub/Proj".into(),
            server_url: "https://gitlab.com".into(),
            ..LocalRun::default()
        };
        let vars = run.predefined_variables();
        let get = |k: &str| vars.iter().find(|v| v.key == k).map(|v| v.value.as_str());
        assert_eq!(get("CI_SERVER_HOST"), Some("gitlab.com"));
        assert_eq!(get("CI_SERVER_PORT"), Some("443"));
        assert_eq!(
            get("CI_PROJECT_URL"),
            Some("https://gitlab.com/Group/Sub/Proj")
        );
        assert_eq!(get("CI_API_V4_URL"), Some("https://gitlab.com/api/v4"));
        assert_eq!(
            get("CI_REGISTRY_IMAGE"),
            Some("registry.gitlab.com/group/sub/proj")
        );
        assert_eq!(
            get("CI_PAGES_URL"),
            Some("https://group.gitlab.io/Sub/Proj")
        );
        let other = LocalRun {
            project_path: "g/p".into(),
            server_url: "http://git.local:8080".into(),
            ..LocalRun::default()
        };
        let vars = other.predefined_variables();
        let get = |k: &str| vars.iter().find(|v| v.key == k).map(|v| v.value.as_str());
        assert_eq!(get("CI_SERVER_FQDN"), Some("git.local:8080"));
        assert_eq!(get("CI_SERVER_PORT"), Some("8080"));
        assert_eq!(get("CI_PAGES_URL"), None);
        let none = LocalRun::default().predefined_variables();
        assert!(none.iter().all(|v| v.key != "CI_SERVER_URL"));
    }

    #[test]
    fn branch_and_tag_runs() {
        let branch = LocalRun {
            branch: Some("Feature/X".into()),
            sha: "0123456789abcdef".into(),
            message: "Title line\n\nBody".into(),
            project_path: "group/sub/proj".into(),
            ..LocalRun::default()
        };
        let vars = branch.predefined_variables();
        let get = |k: &str| vars.iter().find(|v| v.key == k).map(|v| v.value.as_str());
        assert_eq!(get("CI_COMMIT_BRANCH"), Some("Feature/X"));
        assert_eq!(get("CI_COMMIT_REF_SLUG"), Some("feature-x"));
        assert_eq!(get("CI_COMMIT_SHORT_SHA"), Some("01234567"));
        assert_eq!(get("CI_COMMIT_TITLE"), Some("Title line"));
        assert_eq!(get("CI_COMMIT_DESCRIPTION"), Some("Body"));
        assert_eq!(get("CI_PROJECT_NAMESPACE"), Some("group/sub"));
        assert_eq!(get("CI_PROJECT_NAME"), Some("proj"));
        assert_eq!(get("CI_PIPELINE_SOURCE"), Some("push"));
        assert_eq!(get("CI_COMMIT_TAG"), None);
        let tag = LocalRun {
            branch: Some("main".into()),
            tag: Some("v1.2".into()),
            ..LocalRun::default()
        };
        let vars = tag.predefined_variables();
        let get = |k: &str| vars.iter().find(|v| v.key == k).map(|v| v.value.as_str());
        assert_eq!(get("CI_COMMIT_TAG"), Some("v1.2"));
        assert_eq!(get("CI_COMMIT_BRANCH"), None);
        assert_eq!(get("CI_COMMIT_REF_NAME"), Some("v1.2"));
    }
}
