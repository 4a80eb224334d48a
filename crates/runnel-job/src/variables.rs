//! The resolved variable list of a job and `$VAR` / `${VAR}` expansion.
//!
//! [`JobVariables`] keeps variables in order; lookups return the last entry with a key, as the
//! official runner does. [`expand`] follows Go's `os.Expand` rules with the runner's lookup
//! (`$$` is a literal `$`, positional and special parameters are empty). Expansion is a single
//! pass over the unexpanded values: a value that refers to itself sees its own raw text, never
//! a recursively expanded one. This module does not decide the order (see the planner).

use runnel_types::Variable;
pub use runnel_types::expand;

/// An ordered list of job variables; later entries win on lookup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobVariables(Vec<Variable>);

impl JobVariables {
    /// Wraps a list in the given order.
    pub fn new(variables: Vec<Variable>) -> Self {
        Self(variables)
    }

    /// Appends one variable (it wins over earlier ones with the same key).
    pub fn push(&mut self, variable: Variable) {
        self.0.push(variable);
    }

    /// The last variable named `key`.
    pub fn get(&self, key: &str) -> Option<&Variable> {
        self.0.iter().rev().find(|v| v.key == key)
    }

    /// The value of the last variable named `key`, or `""`.
    pub fn value(&self, key: &str) -> &str {
        self.get(key).map_or("", |v| v.value.as_str())
    }

    /// Every variable, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Variable> {
        self.0.iter()
    }

    /// How many entries the list holds (duplicates included).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Expands `value` against this list with the runner's lookup rules.
    pub fn expand_value(&self, value: &str) -> String {
        expand(value, |name| self.lookup(name))
    }

    /// A copy where every non-raw value is expanded against the unexpanded list.
    pub fn expanded(&self) -> Self {
        let variables = self
            .0
            .iter()
            .map(|v| {
                let mut v = v.clone();
                if !v.raw {
                    v.value = self.expand_value(&v.value);
                }
                v
            })
            .collect();
        Self(variables)
    }

    fn lookup(&self, name: &str) -> String {
        match name {
            "$" => "$".to_owned(),
            "*" | "#" | "@" | "!" | "?" => String::new(),
            n if n.len() == 1 && n.as_bytes().first().is_some_and(u8::is_ascii_digit) => {
                String::new()
            }
            _ => self.value(name).to_owned(),
        }
    }
}

impl<'a> IntoIterator for &'a JobVariables {
    type Item = &'a Variable;
    type IntoIter = std::slice::Iter<'a, Variable>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> JobVariables {
        JobVariables::new(pairs.iter().map(|(k, v)| Variable::new(*k, *v)).collect())
    }

    #[test]
    fn expands_like_go() {
        let v = vars(&[("A", "1"), ("B", "two"), ("A", "3")]);
        assert_eq!(v.expand_value("$A-${B}"), "3-two");
        assert_eq!(v.expand_value("x$UNDEFINED.y"), "x.y");
        assert_eq!(v.expand_value("cost $$5"), "cost $5");
        assert_eq!(v.expand_value("$"), "$");
        assert_eq!(v.expand_value("a $ b"), "a $ b");
        assert_eq!(v.expand_value("${}x"), "x");
        assert_eq!(v.expand_value("${A"), "A");
        assert_eq!(v.expand_value("$1$?$*"), "");
        assert_eq!(v.expand_value("${A}${B}é"), "3twoé");
    }

    #[test]
    fn self_reference_is_single_pass() {
        let v = vars(&[("P", "/bin"), ("P", "$P:/usr/bin")]);
        let e = v.expanded();
        assert_eq!(e.value("P"), "$P:/usr/bin:/usr/bin");
    }

    #[test]
    fn raw_values_are_not_expanded() {
        let mut raw = Variable::new("R", "$A");
        raw.raw = true;
        let v = JobVariables::new(vec![Variable::new("A", "1"), raw]);
        assert_eq!(v.expanded().value("R"), "$A");
    }
}
