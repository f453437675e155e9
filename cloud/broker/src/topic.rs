//! Topic names and topic filters (MQTT 3.1.1 §4.7): validation, wildcard matching and the
//! `$share/<group>/<filter>` shared-subscription prefix. Written here rather than taken from
//! the codec crate because its matcher refuses every `$`-topic even for an exact filter,
//! and the ACL in the cloud must agree byte for byte with what the router delivers.

/// Why a name or filter is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    /// A topic name (PUBLISH, Last Will) may not hold `+` or `#`.
    Wildcard,
    /// `#` not alone in the last level, or `+` not alone in its level.
    BadWildcard,
    /// U+0000 is forbidden anywhere (§1.5.3).
    Nul,
    TooLong,
    /// `$share/` without a group and a filter, or a group holding `+`/`#`.
    BadShare,
}

/// Longest name or filter accepted; the wire format allows 65535 bytes, nobody needs that.
pub const MAX_TOPIC_LEN: usize = 1024;

/// Checks a topic name for PUBLISH or a Last Will.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Checks a plain topic filter (without a `$share/` prefix).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != last) {
            return Err(TopicError::BadWildcard);
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

/// A SUBSCRIBE filter split into its optional share group and the filter proper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub group: Option<&'a str>,
    pub filter: &'a str,
}

/// Parses and validates a SUBSCRIBE filter, `$share/<group>/<filter>` included.
pub fn parse_filter(raw: &str) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
            return Err(TopicError::BadShare);
        }
        validate_filter(filter)?;
        Ok(ParsedFilter {
            group: Some(group),
            filter,
        })
    } else {
        validate_filter(raw)?;
        Ok(ParsedFilter {
            group: None,
            filter: raw,
        })
    }
}

/// Does `topic` (a valid name) match `filter` (a valid plain filter)? Topics beginning
/// with `$` are not matched by a leading wildcard (§4.7.2).
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("a/b").is_ok());
        assert!(validate_name("/").is_ok());
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a/#"), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a\0"), Err(TopicError::Nul));
        assert_eq!(
            validate_name(&"x".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "a/+/c", "+/+", "/", "a//b", "$SYS/#"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a/#/c", "a#", "a/b+", "+a", "##", ""] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shares() {
        assert_eq!(
            parse_filter("$share/g/a/+").unwrap(),
            ParsedFilter {
                group: Some("g"),
                filter: "a/+"
            }
        );
        assert_eq!(parse_filter("a/b").unwrap().group, None);
        assert_eq!(parse_filter("$share/g"), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share//a"), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share/g+/a"), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share/g/"), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share/g/a#"), Err(TopicError::BadWildcard));
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b/c", "a/b/c", true),
            ("a/b/c", "a/+/c", true),
            ("a/b/c", "a/#", true),
            ("a", "a/#", true),
            ("a/b/c", "#", true),
            ("a/b/c", "a/+", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a//c", "a/+/c", true),
            ("$SYS/x", "#", false),
            ("$SYS/x", "+/x", false),
            ("$SYS/x", "$SYS/#", true),
            ("$SYS/x", "$SYS/x", true),
            ("dmr/v1/gw/1/state", "dmr/v1/gw/+/state", true),
            ("dmr/v1/gw/1/state", "dmr/v1/gw/+/cmd", false),
        ];
        for (t, f, want) in cases {
            assert_eq!(matches(t, f), want, "{t} vs {f}");
        }
    }
}
