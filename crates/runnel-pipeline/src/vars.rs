//! Variables as GitLab's server prepares them for a job: nested references expanded before the
//! job is sent, in dependency order, with cycles reported; and the rule that decides whether a
//! value can be masked.
//!
//! GitLab sorts a job's variables topologically by the variables each value references (`$X`,
//! `${X}`, `%X%`) and expands them in that order, so `NESTED: "[$COMBINED]"` with
//! `COMBINED: "$GREETING-$TARGET"` reaches the runner as `[hello-world]` whatever the order in
//! the file. For the runner it keeps what only the runner can resolve: references to unknown
//! variables (`$HOME`, `$CI_PROJECT_DIR`), to file variables (the runner replaces those with the
//! file's path) and to `expand: false` variables (the runner must not expand their value again);
//! `$$` and `%%` stay as they are. `expand: false` values are never expanded. A reference cycle
//! longer than one variable is an error that names the variables; a variable that references its
//! own name sees the definition before it (`PATH: "$PATH:/x"`).

use std::collections::HashMap;

use runnel_types::Variable;

/// The longest value expansion may build (references that double at each level would otherwise
/// grow without bound).
const MAX_EXPANDED: usize = 1 << 20;

/// One `$$`/`%%` escape or a variable reference in a value.
enum Piece<'a> {
    Text(&'a str),
    Reference { key: &'a str, whole: &'a str },
}

fn is_key_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Splits `value` as GitLab's `VARIABLES_REGEXP` does:
/// `$$ | %% | $KEY | ${KEY} | %KEY%`.
fn pieces(value: &str) -> Vec<Piece<'_>> {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let found: Option<(usize, Option<(usize, usize)>)> = match b {
            b'$' => match bytes.get(i + 1) {
                Some(b'$') => Some((i + 2, None)),
                Some(&c) if is_key_start(c) => {
                    let end = (i + 1..bytes.len())
                        .find(|&j| !is_key_byte(bytes[j]))
                        .unwrap_or(bytes.len());
                    Some((end, Some((i + 1, end))))
                }
                Some(b'{') => {
                    let start = i + 2;
                    let end = (start..bytes.len())
                        .find(|&j| !is_key_byte(bytes[j]))
                        .unwrap_or(bytes.len());
                    let valid_key = end > start && is_key_start(bytes[start]);
                    match bytes.get(end) {
                        Some(b'}') if valid_key => Some((end + 1, Some((start, end)))),
                        // `${}`: matched, but no key.
                        Some(b'}') if end == start => Some((end + 1, None)),
                        _ => None,
                    }
                }
                _ => None,
            },
            b'%' => match bytes.get(i + 1) {
                Some(b'%') => Some((i + 2, None)),
                Some(&c) if is_key_start(c) => {
                    let end = (i + 1..bytes.len())
                        .find(|&j| !is_key_byte(bytes[j]))
                        .unwrap_or(bytes.len());
                    match bytes.get(end) {
                        Some(b'%') => Some((end + 1, Some((i + 1, end)))),
                        _ => None,
                    }
                }
                _ => None,
            },
            _ => None,
        };
        match found {
            Some((end, key)) => {
                if text_start < i {
                    out.push(Piece::Text(&value[text_start..i]));
                }
                match key {
                    Some((s, e)) => out.push(Piece::Reference {
                        key: &value[s..e],
                        whole: &value[i..end],
                    }),
                    None => out.push(Piece::Text(&value[i..end])),
                }
                i = end;
                text_start = end;
            }
            None => i += 1,
        }
    }
    if text_start < bytes.len() {
        out.push(Piece::Text(&value[text_start..]));
    }
    out
}

/// The names a value references (none for `expand: false` variables).
fn depends_on(variable: &Variable) -> Vec<&str> {
    if variable.raw {
        return Vec::new();
    }
    pieces(&variable.value)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Reference { key, .. } => Some(key),
            Piece::Text(_) => None,
        })
        .collect()
}

/// Orders `vars` so that every variable comes after the ones it references (GitLab's TSort:
/// nodes in collection order, children in reference order). `Err` names the variables of a
/// cycle longer than one.
fn sort(vars: &[Variable]) -> Result<Vec<usize>, String> {
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, v) in vars.iter().enumerate() {
        by_key.entry(v.key.as_str()).or_default().push(i);
    }
    let children: Vec<Vec<usize>> = vars
        .iter()
        .enumerate()
        .map(|(i, v)| {
            depends_on(v)
                .into_iter()
                .flat_map(|k| by_key.get(k).into_iter().flatten().copied())
                .filter(|&j| j != i)
                .collect()
        })
        .collect();
    // Iterative depth-first search; a child on the current path closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; vars.len()];
    let mut order = Vec::with_capacity(vars.len());
    for root in 0..vars.len() {
        if marks[root] != Mark::New {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if let Some(&child) = children[node].get(*next) {
                *next += 1;
                match marks[child] {
                    Mark::New => {
                        marks[child] = Mark::OnPath;
                        path.push((child, 0));
                    }
                    Mark::OnPath => {
                        let start = path.iter().position(|(n, _)| *n == child).unwrap_or(0);
                        let mut keys: Vec<String> = Vec::new();
                        for (n, _) in &path[start..] {
                            let key = format!("{:?}", vars[*n].key);
                            if !keys.contains(&key) {
                                keys.push(key);
                            }
                        }
                        if keys.len() > 1 {
                            return Err(format!(
                                "circular variable reference detected: [{}]",
                                keys.join(", ")
                            ));
                        }
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                order.push(node);
                path.pop();
            }
        }
    }
    Ok(order)
}

/// Only checks `vars` for reference cycles, as GitLab does when it creates a pipeline.
pub fn check_variable_cycles(vars: &[Variable]) -> Result<(), String> {
    sort(vars).map(|_| ())
}

/// Expands nested references the way GitLab's server does before it sends a job to a runner
/// (see the module documentation). The result is in dependency order; for every key the last
/// variable of that key is still the one that wins. `Err` names a reference cycle.
pub fn expand_for_runner(vars: &[Variable]) -> Result<Vec<Variable>, String> {
    let order = sort(vars)?;
    let mut done: Vec<Variable> = Vec::with_capacity(vars.len());
    let mut latest: HashMap<String, usize> = HashMap::new();
    for i in order {
        let mut variable = vars[i].clone();
        if !variable.raw {
            let mut value = String::with_capacity(variable.value.len());
            for piece in pieces(&vars[i].value) {
                match piece {
                    Piece::Text(text) => value.push_str(text),
                    Piece::Reference { key, whole } => match latest.get(key).map(|&j| &done[j]) {
                        Some(found) if found.file || found.raw => value.push_str(whole),
                        Some(found) => value.push_str(&found.value),
                        None => value.push_str(whole),
                    },
                }
                if value.len() > MAX_EXPANDED {
                    return Err(format!(
                        "variable {:?} expands to more than {} KiB",
                        variable.key,
                        MAX_EXPANDED / 1024
                    ));
                }
            }
            variable.value = value;
        }
        latest.insert(variable.key.clone(), done.len());
        done.push(variable);
    }
    Ok(done)
}

/// Why GitLab would refuse to mask `value`, or `None` when it can be masked: at least 8
/// characters, all from the Base64 alphabet or `@ : . ~ - _` (GitLab's rule for masked,
/// expanded variables).
pub fn unmaskable_reason(value: &str) -> Option<String> {
    let mut bad: Vec<char> = value
        .chars()
        .filter(|c| !(c.is_ascii_alphanumeric() || "_+=/@:.~-".contains(*c)))
        .collect();
    bad.sort_unstable();
    bad.dedup();
    let mut reasons = Vec::new();
    if !bad.is_empty() {
        let shown: Vec<String> = bad
            .iter()
            .map(|c| {
                if c.is_whitespace() {
                    "whitespace".to_owned()
                } else {
                    c.to_string()
                }
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        reasons.push(format!(
            "it contains characters that cannot be masked ({})",
            shown.join(" ")
        ));
    }
    if value.chars().count() < 8 {
        reasons.push("it is shorter than 8 characters".to_owned());
    }
    (!reasons.is_empty()).then(|| reasons.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(key: &str, value: &str) -> Variable {
        Variable::new(key, value)
    }

    fn get<'a>(vars: &'a [Variable], key: &str) -> &'a str {
        vars.iter()
            .rev()
            .find(|v| v.key == key)
            .map_or("<unset>", |v| v.value.as_str())
    }

    #[test]
    fn nested_references_expand_in_any_order() {
        let vars = [
            var("NESTED", "[$COMBINED]"),
            var("COMBINED", "$GREETING-${TARGET}"),
            var("GREETING", "hello"),
            var("TARGET", "world"),
        ];
        let out = expand_for_runner(&vars).unwrap();
        assert_eq!(get(&out, "NESTED"), "[hello-world]");
        assert_eq!(get(&out, "COMBINED"), "hello-world");
    }

    #[test]
    fn unknown_raw_and_file_references_are_left_to_the_runner() {
        let mut raw = var("RAW", "$GREETING literally");
        raw.raw = true;
        let mut file = var("KEYFILE", "-----BEGIN KEY-----");
        file.file = true;
        let vars = [
            var("GREETING", "hi"),
            raw,
            file,
            var("USE", "$RAW|$KEYFILE|$HOME|$$GREETING|%GREETING%|100%%|${}"),
        ];
        let out = expand_for_runner(&vars).unwrap();
        assert_eq!(get(&out, "RAW"), "$GREETING literally");
        assert_eq!(
            get(&out, "USE"),
            "$RAW|$KEYFILE|$HOME|$$GREETING|hi|100%%|${}"
        );
    }

    #[test]
    fn later_definitions_win_and_self_references_see_the_earlier_one() {
        let vars = [
            var("PATH", "/usr/bin"),
            var("X", "$PATH"),
            var("PATH", "/opt/bin:$PATH"),
        ];
        let out = expand_for_runner(&vars).unwrap();
        assert_eq!(get(&out, "PATH"), "/opt/bin:/usr/bin");
        let last_path = out.iter().rposition(|v| v.key == "PATH").unwrap();
        assert_eq!(out[last_path].value, "/opt/bin:/usr/bin");
    }

    #[test]
    fn cycles_are_reported_by_name() {
        let vars = [
            var("A", "$B"),
            var("B", "${C}x"),
            var("C", "$A"),
            var("D", "1"),
        ];
        let error = expand_for_runner(&vars).unwrap_err();
        assert_eq!(
            error,
            r#"circular variable reference detected: ["A", "B", "C"]"#
        );
        assert!(check_variable_cycles(&[var("A", "$A")]).is_ok());
    }

    #[test]
    fn long_chains_do_not_recurse() {
        let vars: Vec<Variable> = (0..20_000)
            .map(|i| var(&format!("V{i}"), &format!("$V{}", i + 1)))
            .collect();
        let out = expand_for_runner(&vars).unwrap();
        assert_eq!(get(&out, "V0"), "$V20000");
    }

    #[test]
    fn expansion_is_bounded() {
        let mut vars = vec![var("A0", &"x".repeat(1000))];
        for i in 1..40 {
            vars.push(var(&format!("A{i}"), &format!("$A{0}$A{0}", i - 1)));
        }
        let error = expand_for_runner(&vars).unwrap_err();
        assert!(error.contains("expands to more than 1024 KiB"), "{error}");
    }

    #[test]
    fn masking_follows_gitlab() {
        assert_eq!(unmaskable_reason("hunter2-very-secret"), None);
        assert_eq!(unmaskable_reason("abc+/=@:.~-_12"), None);
        assert!(unmaskable_reason("yes").unwrap().contains("shorter than 8"));
        assert!(
            unmaskable_reason("two words here")
                .unwrap()
                .contains("whitespace")
        );
        assert!(unmaskable_reason("pa$$word!!").unwrap().contains("! $"));
    }
}
