//! Label and field selectors: parsing the query-string forms and matching objects.
//!
//! Grammar as upstream's `labels.Parse` and `fields.ParseSelector`: comma-separated
//! requirements; labels support `=`, `==`, `!=`, `in (…)`, `notin (…)`, `key` and `!key`;
//! fields support `=`, `==` and `!=`, with `\` escaping `,`, `=` and `\` in values.

use std::collections::BTreeMap;

use crate::errors::{ApiError, ApiResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRequirement {
    pub key: String,
    pub op: LabelOp,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    pub requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| {
            let value = get(&r.key);
            match &r.op {
                LabelOp::Equals(v) => value == Some(v.as_str()),
                LabelOp::NotEquals(v) => value != Some(v.as_str()),
                LabelOp::In(vs) => value.is_some_and(|x| vs.iter().any(|v| v == x)),
                LabelOp::NotIn(vs) => value.is_none_or(|x| !vs.iter().any(|v| v == x)),
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
            }
        })
    }

    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches(|k| labels.get(k).map(String::as_str))
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

fn label_error(message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {message}"))
}

/// Checks a label key the way upstream does: an optional DNS subdomain prefix and a name part.
fn check_label_key(key: &str) -> ApiResult<()> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(label_error(format!(
            "invalid label key \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

fn check_label_value(value: &str) -> ApiResult<()> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(label_error(format!(
            "invalid label value: \"{value}\": at key: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

/// Splits on commas that are not inside parentheses.
fn split_requirements(input: &str) -> ApiResult<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(label_error("unbalanced parenthesis"));
                }
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(label_error("unbalanced parenthesis"));
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_set(rest: &str) -> ApiResult<Vec<String>> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| label_error(format!("found '{rest}', expected: '('")))?;
    let mut values = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        check_label_value(v)?;
        values.push(v.to_string());
    }
    Ok(values)
}

pub fn parse_label_selector(input: &str) -> ApiResult<LabelSelector> {
    let mut selector = LabelSelector::default();
    if input.trim().is_empty() {
        return Ok(selector);
    }
    for part in split_requirements(input)? {
        let part = part.trim();
        if part.is_empty() {
            return Err(label_error("found '', expected: identifier"));
        }
        let requirement = if let Some(key) = part.strip_prefix('!') {
            let key = key.trim();
            check_label_key(key)?;
            LabelRequirement {
                key: key.to_string(),
                op: LabelOp::DoesNotExist,
            }
        } else if let Some(idx) = part.find("!=") {
            let (key, value) = (part[..idx].trim(), part[idx + 2..].trim());
            check_label_key(key)?;
            check_label_value(value)?;
            LabelRequirement {
                key: key.to_string(),
                op: LabelOp::NotEquals(value.to_string()),
            }
        } else if let Some(idx) = part.find('=') {
            let key = part[..idx].trim();
            let value = part[idx + 1..]
                .strip_prefix('=')
                .unwrap_or(&part[idx + 1..])
                .trim();
            check_label_key(key)?;
            check_label_value(value)?;
            LabelRequirement {
                key: key.to_string(),
                op: LabelOp::Equals(value.to_string()),
            }
        } else {
            let mut words = part.splitn(2, char::is_whitespace);
            let key = words.next().unwrap_or_default().trim();
            let rest = words.next().unwrap_or_default().trim();
            check_label_key(key)?;
            if rest.is_empty() {
                LabelRequirement {
                    key: key.to_string(),
                    op: LabelOp::Exists,
                }
            } else if let Some(set) = rest.strip_prefix("notin") {
                LabelRequirement {
                    key: key.to_string(),
                    op: LabelOp::NotIn(parse_set(set)?),
                }
            } else if let Some(set) = rest.strip_prefix("in") {
                LabelRequirement {
                    key: key.to_string(),
                    op: LabelOp::In(parse_set(set)?),
                }
            } else {
                return Err(label_error(format!(
                    "found '{rest}', expected: in, notin, =, ==, !=, gt, lt"
                )));
            }
        };
        selector.requirements.push(requirement);
    }
    Ok(selector)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub equal: bool,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| {
            let value = get(&r.field).unwrap_or("");
            (value == r.value) == r.equal
        })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value this selector pins `field` to with `=`, if any (used to narrow a list).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.equal && r.field == field)
            .map(|r| r.value.as_str())
    }
}

/// Splits on `sep` where not escaped by a backslash.
fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = input.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.last_mut().expect("non-empty").push(c);
            if let Some(next) = chars.next() {
                out.last_mut().expect("non-empty").push(next);
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().expect("non-empty").push(c);
        }
    }
    out
}

fn unescape_field_value(value: &str) -> ApiResult<String> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('\\' | ',' | '=')) => out.push(n),
                Some(n) => {
                    return Err(ApiError::bad_request(format!(
                        "invalid field selector: invalid escape sequence: \\{n}"
                    )));
                }
                None => {
                    return Err(ApiError::bad_request(
                        "invalid field selector: unterminated escape sequence",
                    ));
                }
            }
        } else if matches!(c, ',' | '=') {
            return Err(ApiError::bad_request(format!(
                "invalid field selector: unescaped {c} in value {value:?}"
            )));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

pub fn parse_field_selector(input: &str) -> ApiResult<FieldSelector> {
    let mut selector = FieldSelector::default();
    if input.trim().is_empty() {
        return Ok(selector);
    }
    for part in split_unescaped(input, ',') {
        if part.is_empty() {
            continue;
        }
        let (field, value, equal) = if let Some(idx) = part.find("!=") {
            (&part[..idx], &part[idx + 2..], false)
        } else if let Some(idx) = part.find("==") {
            (&part[..idx], &part[idx + 2..], true)
        } else if let Some(idx) = part.find('=') {
            (&part[..idx], &part[idx + 1..], true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{input}'; can't understand '{part}'"
            )));
        };
        let field = field.trim();
        if field.is_empty() {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{input}'; can't understand '{part}'"
            )));
        }
        selector.requirements.push(FieldRequirement {
            field: field.to_string(),
            value: unescape_field_value(value)?,
            equal,
        });
    }
    Ok(selector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_forms() {
        let s =
            parse_label_selector("app=web,tier!=db,env in (prod, staging),!legacy,team").unwrap();
        assert_eq!(s.requirements.len(), 5);
        assert!(s.matches_map(&labels(&[("app", "web"), ("env", "prod"), ("team", "a")])));
        assert!(!s.matches_map(&labels(&[("app", "web"), ("env", "dev"), ("team", "a")])));
        assert!(!s.matches_map(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("team", "a"),
            ("legacy", "1")
        ])));
        let s = parse_label_selector("env notin (dev)").unwrap();
        assert!(s.matches_map(&labels(&[])));
        assert!(!s.matches_map(&labels(&[("env", "dev")])));
        assert!(
            parse_label_selector("app==web")
                .unwrap()
                .matches_map(&labels(&[("app", "web")]))
        );
        assert!(parse_label_selector("example.com/app=x").is_ok());
    }

    #[test]
    fn label_selector_errors() {
        for bad in [
            "app=we b",
            "-app=x",
            "app in prod",
            "app in (a",
            "app=x,",
            "x y z",
            "a=b=c",
        ] {
            let err = parse_label_selector(bad).unwrap_err();
            assert_eq!(err.code, 400, "{bad}");
            assert!(
                err.message.starts_with("unable to parse requirement"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn field_selector_forms() {
        let s = parse_field_selector("metadata.name=a,status.phase!=Running").unwrap();
        let get = |f: &str| match f {
            "metadata.name" => Some("a"),
            "status.phase" => Some("Pending"),
            _ => None,
        };
        assert!(s.matches(get));
        assert_eq!(s.exact("metadata.name"), Some("a"));
        let s = parse_field_selector(r"metadata.name=a\,b").unwrap();
        assert_eq!(s.requirements[0].value, "a,b");
        assert!(parse_field_selector("justtext").is_err());
        assert!(parse_field_selector(r"a=b\q").is_err());
    }

    proptest! {
        // Any input either parses or is a 400: never a panic.
        #[test]
        fn label_selector_never_panics(input in ".{0,80}") {
            if let Err(e) = parse_label_selector(&input) { prop_assert_eq!(e.code, 400); }
        }

        #[test]
        fn field_selector_never_panics(input in ".{0,80}") {
            if let Err(e) = parse_field_selector(&input) { prop_assert_eq!(e.code, 400); }
        }

        #[test]
        fn equality_selector_round_trips(key in "[a-z][a-z0-9]{0,10}", value in "[a-z0-9]{0,10}") {
            let s = parse_label_selector(&format!("{key}={value}")).unwrap();
            prop_assert!(s.matches_map(&labels(&[(&key, &value)])));
        }
    }
}
