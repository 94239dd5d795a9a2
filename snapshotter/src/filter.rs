//! Walk filters in containerd's syntax.
//!
//! A [`Filter`] is a comma-separated list of conditions that must all hold;
//! `walk` takes a list of filters and yields a snapshot if *any* matches.
//! Conditions: `field` (present and non-empty), `field==value`,
//! `field!=value`. Fields: `name`, `parent`, `kind`, `labels.NAME`; a path
//! component or value may be double-quoted (`labels."containerd.io/gc.root"`,
//! `parent!=""`). Regular-expression matching (`~=`) is not supported.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};
use crate::types::Info;

/// The field a condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The key or name.
    Name,
    /// The parent's name (empty when there is none).
    Parent,
    /// `view`, `active` or `committed`.
    Kind,
    /// One label.
    Label(String),
}

/// How a condition compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The field is present and non-empty.
    Exists,
    /// The field equals the value.
    Equal(String),
    /// The field differs from the value (an absent field is empty).
    NotEqual(String),
}

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// What to look at.
    pub field: Field,
    /// How to compare it.
    pub op: Op,
}

/// Conditions that must all hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter(pub Vec<Condition>);

impl Condition {
    fn value<'a>(&self, info: &'a Info) -> Option<std::borrow::Cow<'a, str>> {
        match &self.field {
            Field::Name => Some(info.name.as_str().into()),
            Field::Parent => info.parent.as_deref().map(Into::into),
            Field::Kind => Some(info.kind.to_string().into()),
            Field::Label(l) => info.labels.get(l).map(|v| v.as_str().into()),
        }
    }

    /// Whether `info` satisfies this condition.
    pub fn matches(&self, info: &Info) -> bool {
        let v = self.value(info);
        match &self.op {
            Op::Exists => v.is_some_and(|v| !v.is_empty()),
            Op::Equal(want) => v.as_deref().unwrap_or("") == want,
            Op::NotEqual(want) => v.as_deref().unwrap_or("") != want,
        }
    }
}

impl Filter {
    /// Whether `info` satisfies every condition.
    pub fn matches(&self, info: &Info) -> bool {
        self.0.iter().all(|c| c.matches(info))
    }
}

/// Whether `info` matches any of `filters` (an empty list matches everything).
pub fn matches_any(filters: &[Filter], info: &Info) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(info))
}

fn bad(s: &str, d: &str) -> Error {
    Error::new(ErrorKind::InvalidArgument, "parse filter")
        .key(s)
        .detail(d.to_owned())
}

/// Reads a possibly quoted token up to one of `stops`; returns it and the rest.
fn token<'a>(input: &'a str, stops: &[&str], whole: &str) -> Result<(String, &'a str)> {
    if let Some(rest) = input.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(e),
                    None => return Err(bad(whole, "unterminated escape")),
                },
                '"' => return Ok((out, &rest[i + 1..])),
                c => out.push(c),
            }
        }
        Err(bad(whole, "unterminated quote"))
    } else {
        let end = stops
            .iter()
            .filter_map(|s| input.find(s))
            .min()
            .unwrap_or(input.len());
        Ok((input[..end].to_owned(), &input[end..]))
    }
}

fn quote_if_needed(s: &str, specials: &[char]) -> String {
    if s.is_empty() || s.contains(specials) {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s.to_owned()
    }
}

impl FromStr for Filter {
    type Err = Error;
    fn from_str(s: &str) -> Result<Filter> {
        let mut rest = s;
        let mut conds = Vec::new();
        loop {
            let (first, r) = token(rest, &[".", "==", "!=", "~=", ","], s)?;
            rest = r;
            let field = match first.as_str() {
                "name" => Field::Name,
                "parent" => Field::Parent,
                "kind" => Field::Kind,
                "labels" => {
                    let r = rest
                        .strip_prefix('.')
                        .ok_or_else(|| bad(s, "labels needs a label name: labels.NAME"))?;
                    let (l, r) = token(r, &["==", "!=", "~=", ","], s)?;
                    rest = r;
                    Field::Label(l)
                }
                other => {
                    return Err(bad(
                        s,
                        &format!("unknown field {other:?}: use name, parent, kind or labels.NAME"),
                    ))
                }
            };
            let op = if let Some(r) = rest.strip_prefix("==") {
                let (v, r) = token(r, &[","], s)?;
                rest = r;
                Op::Equal(v)
            } else if let Some(r) = rest.strip_prefix("!=") {
                let (v, r) = token(r, &[","], s)?;
                rest = r;
                Op::NotEqual(v)
            } else if rest.starts_with("~=") {
                return Err(bad(s, "regular-expression filters (~=) are not supported"));
            } else {
                Op::Exists
            };
            conds.push(Condition { field, op });
            if rest.is_empty() {
                break;
            }
            rest = rest
                .strip_prefix(',')
                .ok_or_else(|| bad(s, "expected ',' between conditions"))?;
        }
        Ok(Filter(conds))
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &c.field {
                Field::Name => f.write_str("name")?,
                Field::Parent => f.write_str("parent")?,
                Field::Kind => f.write_str("kind")?,
                Field::Label(l) => write!(
                    f,
                    "labels.{}",
                    quote_if_needed(l, &['.', '=', '!', '~', ',', '"', '\\'])
                )?,
            }
            match &c.op {
                Op::Exists => {}
                Op::Equal(v) => write!(f, "=={}", quote_if_needed(v, &[',', '"', '\\']))?,
                Op::NotEqual(v) => write!(f, "!={}", quote_if_needed(v, &[',', '"', '\\']))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Kind;
    use proptest::prelude::*;
    use std::time::SystemTime;

    fn info(name: &str, parent: Option<&str>, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.map(Into::into),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn parses_containerd_examples() {
        let f: Filter = "kind==active,labels.\"containerd.io/gc.root\"==check-walk"
            .parse()
            .unwrap();
        assert_eq!(f.0.len(), 2);
        assert_eq!(f.0[1].field, Field::Label("containerd.io/gc.root".into()));
        let a = info(
            "a",
            None,
            Kind::Active,
            &[("containerd.io/gc.root", "check-walk")],
        );
        assert!(f.matches(&a));
        let v = info(
            "v",
            None,
            Kind::View,
            &[("containerd.io/gc.root", "check-walk")],
        );
        assert!(!f.matches(&v));

        let f: Filter = "parent!=\"\"".parse().unwrap();
        assert!(!f.matches(&a));
        assert!(f.matches(&info("c", Some("p"), Kind::Active, &[])));

        let f: Filter = "name==a-wl,labels.l".parse().unwrap();
        assert!(f.matches(&info("a-wl", None, Kind::Active, &[("l", "2")])));
        assert!(!f.matches(&info("a-wl", None, Kind::Active, &[])));
    }

    #[test]
    fn rejects_bad_filters() {
        for bad in [
            "",
            "size==3",
            "labels",
            "name~=a.*",
            "name==\"x",
            "name==a,",
            "kind==view,,name",
        ] {
            let e = bad.parse::<Filter>();
            assert!(e.is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            "bogus".parse::<Filter>().unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            Just(Field::Name),
            Just(Field::Parent),
            Just(Field::Kind),
            "[a-z./\"=,!~\\\\]{1,12}".prop_map(Field::Label),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Exists),
            "[a-z0-9 ,\"\\\\=]{0,10}".prop_map(Op::Equal),
            "[a-z0-9 ,\"\\\\=]{0,10}".prop_map(Op::NotEqual),
        ]
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(conds in prop::collection::vec((field(), op()), 1..4)) {
            let f = Filter(conds.into_iter().map(|(field, op)| Condition { field, op }).collect());
            let s = f.to_string();
            let back: Filter = s.parse().unwrap();
            prop_assert_eq!(back, f);
        }
    }
}
