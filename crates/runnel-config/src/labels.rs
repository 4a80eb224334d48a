//! Checks on `labels` tables (global and per runner), which the official runner limits.
//!
//! The official rules: at most 32 labels, keys matching `^[a-zA-Z0-9_][a-zA-Z0-9._-]{2,64}$`,
//! string values. Merging global and runner labels is left to the daemon.

use crate::read::{Context, Section, join};

/// The most labels one table may hold.
pub(crate) const MAX_LABELS: usize = 32;

/// Reports every bad label key in `section.labels` (types are checked when reading the values).
pub(crate) fn check_labels(section: &mut Section<'_>, cx: &mut Context<'_>) {
    let Some(node) = section.node("labels") else {
        return;
    };
    let Some(table) = node.table_like() else {
        return;
    };
    if table.len() > MAX_LABELS {
        let message = format!(
            "has {} labels, at most {MAX_LABELS} are allowed",
            table.len()
        );
        cx.error(&node.path, node.span(), message);
    }
    for (key, _) in table.iter() {
        if !is_valid_label_key(key) {
            let span = table.get_key_value(key).and_then(|(key, _)| key.span());
            let message = "invalid label key, expected 3 to 65 characters of a-z A-Z 0-9 . _ - \
                           not starting with . or -";
            cx.error(&join(&node.path, key), span, message);
        }
    }
}

fn is_valid_label_key(key: &str) -> bool {
    let mut chars = key.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let rest_len = chars.clone().count();
    (first.is_ascii_alphanumeric() || first == '_')
        && (2..=64).contains(&rest_len)
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_follow_the_official_pattern() {
        assert!(is_valid_label_key("env"));
        assert!(is_valid_label_key("_team.name-1"));
        assert!(!is_valid_label_key("ab"));
        assert!(!is_valid_label_key(".env"));
        assert!(!is_valid_label_key("has space"));
        assert!(!is_valid_label_key(&"x".repeat(66)));
        assert!(is_valid_label_key(&"x".repeat(65)));
    }
}
