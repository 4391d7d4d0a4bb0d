//! A device's identity, given and taken back.
//!
//! Given: an enrolment secret grants what the operator set on it, and
//! nothing a device asks for beyond that ([`Grant`]): every device enrolling
//! with it gets the secret's tags, and only a name its pattern allows
//! (`roof-*`). A device asking for a tag the secret does not grant is
//! refused (403 `tag_not_granted`, naming the tags) rather than enrolled
//! without it: a device that believes it is in `roof` but is not would miss
//! every deployment to `tag:roof` in silence, while a refusal shows the
//! mistake at once, in the device's log and in the server's.
//!
//! Taken back: a device can be revoked, given a new token, or deleted
//! ([`crate::store::DeviceStore`]). Each caches per device on every
//! instance must then forget it: [`forget`] is the one list of them, run
//! at once on the instance that made the change and, through the
//! database's notice, on every other ([`crate::peers`]).

use crate::ServerState;
use crate::error::ApiError;
use crate::store::{Standing, TokenOwner};

/// What an enrolment secret grants.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// The secret's name (`configuration` for `enrollment_secret`).
    pub secret: &'a str,
    /// The tags every device enrolling with it gets.
    pub tags: &'a [String],
    /// The names it may enrol (see [`name_matches`]); `None`: any name.
    pub name_pattern: Option<&'a str>,
}

impl Grant<'_> {
    /// The tags a device enrolling as `name` and asking for `requested`
    /// gets: the secret's, sorted. Refused (403) when the name is outside
    /// the secret's pattern or a requested tag is not among its tags.
    pub fn tags_for(&self, name: &str, requested: &[String]) -> Result<Vec<String>, ApiError> {
        if let Some(pattern) = self.name_pattern
            && !name_matches(pattern, name)
        {
            return Err(ApiError::NotGranted {
                code: "name_not_granted",
                message: format!(
                    "enrolment secret {:?} enrols devices named {pattern:?}, not {name:?}",
                    self.secret
                ),
            });
        }
        let mut refused: Vec<&str> = requested
            .iter()
            .filter(|t| !self.tags.contains(t))
            .map(String::as_str)
            .collect();
        if !refused.is_empty() {
            refused.sort_unstable();
            refused.dedup();
            return Err(ApiError::NotGranted {
                code: "tag_not_granted",
                message: format!(
                    "enrolment secret {:?} does not grant tag{} {}: it grants {} \
                     (a device gets the tags of the secret it enrols with)",
                    self.secret,
                    if refused.len() == 1 { "" } else { "s" },
                    quoted(&refused),
                    if self.tags.is_empty() {
                        "no tag".to_owned()
                    } else {
                        quoted(self.tags)
                    }
                ),
            });
        }
        let mut tags = self.tags.to_vec();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }
}

fn quoted(items: &[impl AsRef<str>]) -> String {
    items
        .iter()
        .map(|t| format!("{:?}", t.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (none included) and every other character for itself.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and where in the name its run ends so far.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    star = Some((sp, sn + 1));
                    pi = sp + 1;
                    ni = sn + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Checks a name pattern: 1 to [`airlift_protocol::NAME_MAX`] device-name
/// characters (letters, digits, `.`, `_`, `-`, `:`) or `*`.
pub fn check_name_pattern(pattern: &str) -> Result<(), String> {
    let valid = !pattern.is_empty()
        && pattern.len() <= airlift_protocol::NAME_MAX
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:*".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "name pattern {pattern:?} is invalid: expected 1 to {} letters, digits, '.', '_', \
             '-', ':' or '*' (any run of them), e.g. roof-*",
            airlift_protocol::NAME_MAX
        ))
    }
}

/// Refuses a token that no longer works (401 [`airlift_protocol::TOKEN_REVOKED`]),
/// saying why; a current token passes.
pub fn check_standing(owner: &TokenOwner) -> Result<(), ApiError> {
    let why = match owner.standing {
        Standing::Active => return Ok(()),
        Standing::Revoked => "this device was revoked",
        Standing::Replaced => "this device was given a new token; this one no longer works",
        Standing::Deleted => "this device was deleted",
    };
    Err(ApiError::TokenRevoked(format!(
        "{why}: the device needs a new token (airlift device rotate-token, or enrol again)"
    )))
}

/// Forgets everything this instance caches of `devices` (revoked, given a
/// new token, or deleted): their tokens, so the next request reads the
/// database and is refused; their open offers, which the change cancelled.
/// A status a check-in buffered just before is still written (to the
/// device's row or its tombstone): it is what the device reported.
pub fn forget(state: &ServerState, devices: &[i64]) {
    state.device_tokens.forget_devices(devices);
    for &device in devices {
        state.offers.forget(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_patterns_match_as_globs() {
        for (pattern, name, expected) in [
            ("roof-*", "roof-1", true),
            ("roof-*", "roof-", true),
            ("roof-*", "roof", false),
            ("roof-*", "attic-roof-1", false),
            ("*-eu", "roof-1-eu", true),
            ("*-eu", "roof-1-us", false),
            ("site-*-eu", "site-7-eu", true),
            ("site-*-eu", "site-7-eu-2", false),
            ("site-*-*", "site-a-b-c", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("*", "anything", true),
            ("**", "", true),
            ("exact", "exact", true),
            ("exact", "Exact", false),
            ("exact", "exactly", false),
        ] {
            assert_eq!(name_matches(pattern, name), expected, "{pattern} {name}");
        }
    }

    #[test]
    fn name_patterns_hold_only_name_characters_and_stars() {
        for (pattern, ok) in [
            ("roof-*", true),
            ("*", true),
            ("a.b_c:d-*", true),
            ("", false),
            ("roof *", false),
            ("roof-?", false),
            ("roof/*", false),
        ] {
            assert_eq!(check_name_pattern(pattern).is_ok(), ok, "{pattern:?}");
        }
        assert!(check_name_pattern(&"a".repeat(65)).is_err());
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn refusal(result: Result<Vec<String>, ApiError>) -> (&'static str, String) {
        match result {
            Err(ApiError::NotGranted { code, message }) => (code, message),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_device_gets_the_tags_of_its_secret_and_no_other_issue_16() {
        let tags = strings(&["roof", "eu"]);
        let grant = Grant {
            secret: "batch-7",
            tags: &tags,
            name_pattern: Some("roof-*"),
        };
        assert_eq!(grant.tags_for("roof-1", &[]).unwrap(), ["eu", "roof"]);
        assert_eq!(
            grant.tags_for("roof-2", &strings(&["roof"])).unwrap(),
            ["eu", "roof"],
            "asking for some of the granted tags gets them all"
        );
        let (code, message) = refusal(grant.tags_for("roof-3", &strings(&["lab", "roof", "prod"])));
        assert_eq!(code, "tag_not_granted");
        assert!(
            message.contains(r#"does not grant tags "lab", "prod": it grants "roof", "eu""#),
            "{message}"
        );
        let (code, message) = refusal(grant.tags_for("attic-1", &[]));
        assert_eq!(code, "name_not_granted");
        assert!(message.contains(r#"enrols devices named "roof-*", not "attic-1""#));
        let none = Grant {
            secret: "configuration",
            tags: &[],
            name_pattern: None,
        };
        assert!(none.tags_for("any-name", &[]).unwrap().is_empty());
        let (_, message) = refusal(none.tags_for("any-name", &strings(&["lab"])));
        assert!(message.contains("it grants no tag"), "{message}");
    }
}
