//! `${env:NAME}` and `${env:NAME:-default}` in flow files: values taken from the environment when
//! the flow is loaded, so secrets and deployment-specific URLs stay out of the file.
//!
//! Every value that came from the environment is remembered as a secret and redacted wherever the
//! run would record it; defaults are not secrets.

use std::sync::OnceLock;

use regex::Regex;

use super::EnvLookup;
use crate::steps::join_path;

fn pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}").expect("valid regex")
    })
}

/// Substitutes environment references in every string of `value`. Returns the problems found as
/// (field path relative to `value`, message).
pub fn substitute(
    value: &mut serde_yaml::Value,
    env: EnvLookup<'_>,
    secrets: &mut Vec<String>,
) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    walk(value, "", env, secrets, &mut errors);
    errors
}

fn walk(
    value: &mut serde_yaml::Value,
    path: &str,
    env: EnvLookup<'_>,
    secrets: &mut Vec<String>,
    errors: &mut Vec<(String, String)>,
) {
    match value {
        serde_yaml::Value::String(s) if s.contains("${env:") => {
            let mut missing = Vec::new();
            let replaced = pattern().replace_all(s, |caps: &regex::Captures<'_>| {
                let name = &caps[1];
                match (env(name), caps.get(2)) {
                    (Some(v), _) => {
                        if !v.is_empty() && !secrets.contains(&v) {
                            secrets.push(v.clone());
                        }
                        v
                    }
                    (None, Some(default)) => default.as_str().to_owned(),
                    (None, None) => {
                        missing.push(name.to_owned());
                        String::new()
                    }
                }
            });
            *s = replaced.into_owned();
            for name in missing {
                errors.push((
                    path.to_owned(),
                    format!(
                        "the environment variable `{name}` is not set \
                         (set it, or give a default: `${{env:{name}:-value}}`)"
                    ),
                ));
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{path}[{i}]"), env, secrets, errors);
            }
        }
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().map(str::to_owned).unwrap_or_default();
                walk(v, &join_path(path, &key), env, secrets, errors);
            }
        }
        serde_yaml::Value::Tagged(tagged) => walk(&mut tagged.value, path, env, secrets, errors),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_remembers_secrets() {
        let env = |n: &str| (n == "TOKEN").then(|| "s3cret".to_owned());
        let mut v: serde_yaml::Value = serde_yaml::from_str(
            "a: 'Bearer ${env:TOKEN}'\nb: ['${env:URL:-http://x}']\nc: '${env:NOPE}'",
        )
        .unwrap();
        let mut secrets = Vec::new();
        let errors = substitute(&mut v, &env, &mut secrets);
        assert_eq!(v["a"], "Bearer s3cret");
        assert_eq!(v["b"][0], "http://x");
        assert_eq!(secrets, ["s3cret"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "c");
        assert!(errors[0].1.contains("`NOPE` is not set"));
    }
}
