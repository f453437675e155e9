//! Shared pieces of every list endpoint: page/per_page parsing, whitelisted sort keys, the
//! page envelope, and a tiny SQL builder that numbers `$n` placeholders itself (sqlx's
//! `QueryBuilder` writes `?` for the Any driver, which PostgreSQL does not accept).

use serde::Serialize;
use sqlx::any::AnyArguments;
use sqlx::{Any, AssertSqlSafe};

use crate::error::ApiError;

pub const DEFAULT_PER_PAGE: i64 = 50;
pub const MAX_PER_PAGE: i64 = 200;

/// How far a list's `total` is counted. Counting every match of a big list (a merchant's
/// orders, by the hundred thousand) costs as much as reading them all, on every page view;
/// past this many, `total` is a lower bound and `total_exact` is false (issue 5).
pub const COUNT_CAP: i64 = 10_000;

/// One page of results.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: i64,
    pub per_page: i64,
    /// How many rows match: exact when `total_exact`, otherwise a lower bound (more match;
    /// it still reaches past the requested page, so a pager always offers the next one).
    pub total: i64,
    pub total_exact: bool,
}

/// Validated paging.
#[derive(Clone, Copy, Debug)]
pub struct Paging {
    pub page: i64,
    pub per_page: i64,
}

impl Paging {
    pub fn parse(page: Option<&str>, per_page: Option<&str>) -> Result<Paging, ApiError> {
        let page = parse_int("page", page, 1, 1, 1_000_000)?;
        let per_page = parse_int("per_page", per_page, DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)?;
        Ok(Paging { page, per_page })
    }

    pub fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.per_page)
    }
}

/// Parses an integer query parameter within bounds, naming it on failure.
pub fn parse_int(
    name: &str,
    raw: Option<&str>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            Ok(_) => Err(ApiError::validation(
                name,
                format!("must be in {min}..={max}"),
            )),
            Err(_) => Err(ApiError::validation(name, "must be an integer")),
        },
    }
}

/// Turns `sort=-name` into an `ORDER BY` clause using only whitelisted columns; `id` breaks
/// ties so paging is stable.
pub fn order_by(
    raw: Option<&str>,
    allowed: &[(&str, &'static str)],
    default: &'static str,
) -> Result<String, ApiError> {
    let Some(raw) = raw else {
        return Ok(format!("{default}, id"));
    };
    let (desc, key) = match raw.strip_prefix('-') {
        Some(k) => (true, k),
        None => (false, raw),
    };
    let Some((_, column)) = allowed.iter().find(|(k, _)| *k == key) else {
        let keys: Vec<&str> = allowed.iter().map(|(k, _)| *k).collect();
        return Err(ApiError::validation(
            "sort",
            format!("unknown sort key {key:?}; use one of {keys:?}, optionally prefixed with -"),
        ));
    };
    let dir = if desc { "DESC" } else { "ASC" };
    Ok(format!("{column} {dir}, id {dir}"))
}

/// A bound value.
#[derive(Clone, Debug)]
pub enum Bind {
    Text(String),
    Int(i64),
}

/// SQL text plus its arguments in order.
#[derive(Clone, Debug, Default)]
pub struct Sql {
    pub text: String,
    binds: Vec<Bind>,
}

impl Sql {
    pub fn new(text: &str) -> Sql {
        Sql {
            text: text.to_string(),
            binds: Vec::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    pub fn bind(&mut self, value: Bind) -> &mut Self {
        self.binds.push(value);
        let n = self.binds.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    /// Appends another fragment's text and arguments, renumbering its placeholders.
    pub fn append(&mut self, other: &Sql) -> &mut Self {
        let offset = self.binds.len();
        let mut text = String::with_capacity(other.text.len());
        let mut chars = other.text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                match digits.parse::<usize>() {
                    Ok(n) => text.push_str(&format!("${}", n + offset)),
                    Err(_) => text.push('$'),
                }
            } else {
                text.push(c);
            }
        }
        self.text.push_str(&text);
        self.binds.extend(other.binds.iter().cloned());
        self
    }

    pub fn bind_text(&mut self, value: impl Into<String>) -> &mut Self {
        self.bind(Bind::Text(value.into()))
    }

    pub fn bind_int(&mut self, value: i64) -> &mut Self {
        self.bind(Bind::Int(value))
    }

    /// The sqlx query, arguments bound. Only whitelisted fragments and placeholders are
    /// ever pushed into the text, which is what makes the assertion true.
    pub fn query(&self) -> sqlx::query::Query<'static, Any, AnyArguments> {
        let mut q = sqlx::query(AssertSqlSafe(self.text.clone()));
        for b in &self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s.clone()),
                Bind::Int(i) => q.bind(*i),
            };
        }
        q
    }

    pub fn query_as<T>(&self) -> sqlx::query::QueryAs<'static, Any, T, AnyArguments>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        let mut q = sqlx::query_as::<Any, T>(AssertSqlSafe(self.text.clone()));
        for b in &self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s.clone()),
                Bind::Int(i) => q.bind(*i),
            };
        }
        q
    }

    pub fn query_scalar<T>(&self) -> sqlx::query::QueryScalar<'static, Any, T, AnyArguments>
    where
        (T,): for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        let mut q = sqlx::query_scalar::<Any, T>(AssertSqlSafe(self.text.clone()));
        for b in &self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s.clone()),
                Bind::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

/// One page of `table`: the rows matching `where_` (which starts with ` WHERE`) in `order`
/// (an already whitelisted `ORDER BY` clause), and how many match in all. Every list endpoint
/// uses it, so paging behaves the same on every resource.
pub async fn fetch_page<T>(
    db: &crate::db::Db,
    table: &str,
    columns: &str,
    where_: &Sql,
    order: &str,
    paging: Paging,
) -> Result<Page<T>, ApiError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    // Count at most `limit` rows: the cap, or through the page after the requested one when
    // that is deeper, so a capped total still lets the client step on.
    let bound = COUNT_CAP.max(
        paging
            .offset()
            .saturating_add(paging.per_page.saturating_mul(2)),
    );
    let limit = bound.saturating_add(1);
    let mut count = Sql::new(&format!(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM (SELECT 1 AS one FROM {table}"
    ));
    count
        .append(where_)
        .push(" LIMIT ")
        .bind_int(limit)
        .push(") capped");
    let counted = count.query_scalar::<i64>().fetch_one(&db.read).await?;
    let total_exact = counted <= bound;
    let total = counted.min(bound);
    let mut q = Sql::new(&format!("SELECT {columns} FROM {table}"));
    q.append(where_)
        .push(&format!(" ORDER BY {order} LIMIT "))
        .bind_int(paging.per_page)
        .push(" OFFSET ")
        .bind_int(paging.offset());
    let items = q.query_as::<T>().fetch_all(&db.read).await?;
    Ok(Page {
        items,
        page: paging.page,
        per_page: paging.per_page,
        total,
        total_exact,
    })
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` substring search.
pub fn like_pattern(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 2);
    out.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_are_whitelisted() {
        let allowed = [("name", "name"), ("created_at", "created_at")];
        assert_eq!(
            order_by(Some("-name"), &allowed, "created_at").unwrap(),
            "name DESC, id DESC"
        );
        assert_eq!(
            order_by(None, &allowed, "created_at").unwrap(),
            "created_at, id"
        );
        assert!(order_by(Some("name; DROP TABLE x"), &allowed, "created_at").is_err());
    }

    #[test]
    fn placeholders_are_numbered() {
        let mut s = Sql::new("SELECT 1 WHERE a = ");
        s.bind_text("x").push(" AND b = ").bind_int(2);
        assert_eq!(s.text, "SELECT 1 WHERE a = $1 AND b = $2");
        assert_eq!(like_pattern("a%_b"), "%a\\%\\_b%");
        let mut w = Sql::new(" WHERE m = ");
        w.bind_text("m").push(" AND n = ").bind_int(3);
        let mut full = Sql::new("SELECT x FROM t WHERE y = ");
        full.bind_int(1).append(&w);
        assert_eq!(
            full.text,
            "SELECT x FROM t WHERE y = $1 WHERE m = $2 AND n = $3"
        );
    }
}
