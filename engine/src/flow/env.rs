//! `${env:NAME}` and `${env:NAME:-default}` in flow files: values taken from the environment when
//! the flow is loaded, so secrets and deployment-specific URLs stay out of the file.
//!
//! Every value that came from the environment is remembered as a secret and redacted wherever the
//! run would record it; defaults are not secrets.
//!
//! `${server.url}` is the server's own base URL (its `public_url`, or `http://LISTEN`): flows that
//! post to this server (its request inspector, another flow's catch URL) work on any port. It is
//! replaced first, so it may stand in an environment reference's default, and is not a secret.

use std::sync::OnceLock;

use regex::Regex;

use super::EnvLookup;
use crate::steps::join_path;

/// The name [`substitute`] looks `${server.url}` up by.
pub const SERVER_URL: &str = "server.url";

/// `${server.url}` where nothing answers for it (offline runs): the default listen address.
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:8080";

/// How a flow file writes the server's own base URL.
const SERVER_URL_REFERENCE: &str = "${server.url}";

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
        serde_yaml::Value::String(s)
            if s.contains("${env:") || s.contains(SERVER_URL_REFERENCE) =>
        {
            if s.contains(SERVER_URL_REFERENCE) {
                let url = env(SERVER_URL).unwrap_or_else(|| DEFAULT_SERVER_URL.to_owned());
                *s = s.replace(SERVER_URL_REFERENCE, url.trim_end_matches('/'));
            }
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

    #[test]
    fn the_server_url_is_substituted_first_and_is_no_secret() {
        let env = |n: &str| (n == SERVER_URL).then(|| "http://127.0.0.1:4321/".to_owned());
        let mut v: serde_yaml::Value =
            serde_yaml::from_str("a: '${env:ALERTS:-${server.url}/inspect/alerts}'").unwrap();
        let mut secrets = Vec::new();
        assert!(substitute(&mut v, &env, &mut secrets).is_empty());
        assert_eq!(v["a"], "http://127.0.0.1:4321/inspect/alerts");
        assert!(secrets.is_empty());

        let offline = |_: &str| None;
        let mut v: serde_yaml::Value = serde_yaml::from_str("a: '${server.url}/x'").unwrap();
        assert!(substitute(&mut v, &offline, &mut secrets).is_empty());
        assert_eq!(v["a"], format!("{DEFAULT_SERVER_URL}/x"));
    }
}
