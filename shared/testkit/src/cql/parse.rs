//! A parser for the CQL subset the double executes. Anything outside it is a syntax error.
//!
//! Statements: `CREATE KEYSPACE [IF NOT EXISTS] ks WITH ...`, `CREATE TABLE [IF NOT EXISTS]
//! ks.t (col type, ..., PRIMARY KEY ((p1, p2), c1, ...)) [WITH ...]`, `INSERT INTO ks.t
//! (cols) VALUES (terms) [IF NOT EXISTS] [USING TTL t [AND TIMESTAMP t]]`, `SELECT cols|*
//! FROM ks.t [WHERE rel AND ...] [ORDER BY c ASC|DESC] [LIMIT t]`, `UPDATE ks.t [USING
//! ...] SET c = t, ... WHERE rel AND ...`, `DELETE FROM ks.t [USING TIMESTAMP t] WHERE rel AND ...`. Terms are
//! `?` or literals (strings, integers, floats, true/false, null). Types: text, varchar,
//! ascii, bigint, int, boolean, double, blob, timestamp.

use std::fmt;

/// A column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CqlType {
    /// text / varchar / ascii
    Text,
    /// bigint
    BigInt,
    /// int
    Int,
    /// boolean
    Boolean,
    /// double
    Double,
    /// blob
    Blob,
    /// timestamp (epoch ms)
    Timestamp,
}

impl CqlType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" | "varchar" | "ascii" => CqlType::Text,
            "bigint" => CqlType::BigInt,
            "int" => CqlType::Int,
            "boolean" => CqlType::Boolean,
            "double" => CqlType::Double,
            "blob" => CqlType::Blob,
            "timestamp" => CqlType::Timestamp,
            _ => return None,
        })
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    /// 'text'
    Str(String),
    /// an integer
    Int(i64),
    /// a float
    Float(f64),
    /// true / false
    Bool(bool),
    /// null
    Null,
}

/// A value position: a bind marker (numbered in order of appearance) or a literal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Term {
    /// `?`
    Bind(usize),
    /// A literal.
    Lit(Literal),
}

/// A comparison in a WHERE clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// =
    Eq,
    /// <
    Lt,
    /// <=
    Le,
    /// >
    Gt,
    /// >=
    Ge,
}

/// `col op term`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rel {
    /// Column.
    pub(crate) col: String,
    /// Comparison.
    pub(crate) op: Op,
    /// Value.
    pub(crate) term: Term,
}

/// `USING TTL t AND TIMESTAMP t`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Using {
    /// TTL in seconds.
    pub(crate) ttl: Option<Term>,
    /// Write timestamp in microseconds.
    pub(crate) timestamp: Option<Term>,
}

/// A parsed statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stmt {
    /// CREATE KEYSPACE
    CreateKeyspace {
        /// Name.
        name: String,
    },
    /// CREATE TABLE
    CreateTable {
        /// Keyspace.
        ks: String,
        /// Table.
        table: String,
        /// Columns in order.
        columns: Vec<(String, CqlType)>,
        /// Partition key columns.
        partition: Vec<String>,
        /// Clustering columns.
        clustering: Vec<String>,
    },
    /// INSERT
    Insert {
        /// Keyspace.
        ks: String,
        /// Table.
        table: String,
        /// Columns.
        columns: Vec<String>,
        /// Values.
        values: Vec<Term>,
        /// IF NOT EXISTS.
        if_not_exists: bool,
        /// USING.
        using: Using,
    },
    /// SELECT
    Select {
        /// Keyspace.
        ks: String,
        /// Table.
        table: String,
        /// Columns (`None`: `*`).
        columns: Option<Vec<String>>,
        /// WHERE.
        rels: Vec<Rel>,
        /// ORDER BY ... DESC.
        desc: bool,
        /// LIMIT.
        limit: Option<Term>,
    },
    /// UPDATE
    Update {
        /// Keyspace.
        ks: String,
        /// Table.
        table: String,
        /// SET assignments.
        set: Vec<(String, Term)>,
        /// WHERE.
        rels: Vec<Rel>,
        /// USING.
        using: Using,
        /// `IF column = term AND ...`: a lightweight transaction, answering `[applied]`.
        conditions: Vec<(String, Term)>,
    },
    /// DELETE
    Delete {
        /// Keyspace.
        ks: String,
        /// Table.
        table: String,
        /// WHERE.
        rels: Vec<Rel>,
        /// USING TIMESTAMP (parsed; the double keeps no tombstones, so a delete removes
        /// the rows whatever its timestamp).
        using: Using,
    },
}

/// A syntax error with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError(pub String);

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Bind,
    Sym(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, SyntaxError> {
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() || c == ';' {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(
                b[start..i].iter().collect::<String>().to_ascii_lowercase(),
            ));
        } else if c == '"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += 1;
            }
            out.push(Tok::Ident(b[start..i.min(b.len())].iter().collect()));
            i += 1;
        } else if c == '\'' {
            let mut v = String::new();
            i += 1;
            loop {
                match (b.get(i), b.get(i + 1)) {
                    (Some('\''), Some('\'')) => {
                        v.push('\'');
                        i += 2;
                    }
                    (Some('\''), _) => {
                        i += 1;
                        break;
                    }
                    (Some(&ch), _) => {
                        v.push(ch);
                        i += 1;
                    }
                    (None, _) => return Err(SyntaxError("unterminated string literal".into())),
                }
            }
            out.push(Tok::Str(v));
        } else if c.is_ascii_digit() || (c == '-' && b.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_digit() || b[i] == '.' || b[i] == 'e' || b[i] == 'E')
            {
                i += 1;
            }
            out.push(Tok::Num(b[start..i].iter().collect()));
        } else if c == '?' {
            out.push(Tok::Bind);
            i += 1;
        } else {
            let two: String = b[i..(i + 2).min(b.len())].iter().collect();
            let sym = match two.as_str() {
                "<=" => Some("<="),
                ">=" => Some(">="),
                _ => None,
            };
            if let Some(s) = sym {
                out.push(Tok::Sym(s));
                i += 2;
                continue;
            }
            let s = match c {
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '.' => ".",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '*' => "*",
                '{' => "{",
                '}' => "}",
                ':' => ":",
                _ => return Err(SyntaxError(format!("unexpected character {c:?}"))),
            };
            out.push(Tok::Sym(s));
            i += 1;
        }
    }
    Ok(out)
}

struct P {
    toks: Vec<Tok>,
    pos: usize,
    binds: usize,
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn err<T>(&self, what: &str) -> Result<T, SyntaxError> {
        Err(SyntaxError(format!(
            "expected {what} at token {} ({:?})",
            self.pos,
            self.peek()
        )))
    }
    fn kw(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(s)) if s == k) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_kw(&mut self, k: &str) -> Result<(), SyntaxError> {
        if self.kw(k) { Ok(()) } else { self.err(k) }
    }
    fn sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_sym(&mut self, s: &str) -> Result<(), SyntaxError> {
        if self.sym(s) { Ok(()) } else { self.err(s) }
    }
    fn ident(&mut self) -> Result<String, SyntaxError> {
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => self.err("an identifier"),
        }
    }
    /// `ks.table` (the double requires qualified names).
    fn qualified(&mut self) -> Result<(String, String), SyntaxError> {
        let ks = self.ident()?;
        self.expect_sym(".")?;
        Ok((ks, self.ident()?))
    }
    fn term(&mut self) -> Result<Term, SyntaxError> {
        let t = match self.peek().cloned() {
            Some(Tok::Bind) => {
                self.binds += 1;
                Term::Bind(self.binds - 1)
            }
            Some(Tok::Str(s)) => Term::Lit(Literal::Str(s)),
            Some(Tok::Num(n)) => {
                if let Ok(i) = n.parse::<i64>() {
                    Term::Lit(Literal::Int(i))
                } else if let Ok(f) = n.parse::<f64>() {
                    Term::Lit(Literal::Float(f))
                } else {
                    return self.err("a number");
                }
            }
            Some(Tok::Ident(s)) if s == "true" || s == "false" => {
                Term::Lit(Literal::Bool(s == "true"))
            }
            Some(Tok::Ident(s)) if s == "null" => Term::Lit(Literal::Null),
            _ => return self.err("a value"),
        };
        self.pos += 1;
        Ok(t)
    }
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, SyntaxError>,
    ) -> Result<Vec<T>, SyntaxError> {
        let mut v = vec![item(self)?];
        while self.sym(",") {
            v.push(item(self)?);
        }
        Ok(v)
    }
    fn rels(&mut self) -> Result<Vec<Rel>, SyntaxError> {
        let mut out = Vec::new();
        loop {
            let col = self.ident()?;
            let op = if self.sym("=") {
                Op::Eq
            } else if self.sym("<=") {
                Op::Le
            } else if self.sym(">=") {
                Op::Ge
            } else if self.sym("<") {
                Op::Lt
            } else if self.sym(">") {
                Op::Gt
            } else {
                return self.err("a comparison");
            };
            out.push(Rel {
                col,
                op,
                term: self.term()?,
            });
            if !self.kw("and") {
                return Ok(out);
            }
        }
    }
    fn using(&mut self) -> Result<Using, SyntaxError> {
        let mut u = Using::default();
        if self.kw("using") {
            loop {
                if self.kw("ttl") {
                    u.ttl = Some(self.term()?);
                } else if self.kw("timestamp") {
                    u.timestamp = Some(self.term()?);
                } else {
                    return self.err("TTL or TIMESTAMP");
                }
                if !self.kw("and") {
                    break;
                }
            }
        }
        Ok(u)
    }
    /// Skips a `WITH ...` tail (options the double ignores) to the end.
    fn skip_with(&mut self) {
        if self.kw("with") {
            self.pos = self.toks.len();
        }
    }
    fn if_not_exists(&mut self) -> Result<bool, SyntaxError> {
        if self.kw("if") {
            self.expect_kw("not")?;
            self.expect_kw("exists")?;
            return Ok(true);
        }
        Ok(false)
    }
    fn done(&self) -> Result<(), SyntaxError> {
        if self.pos == self.toks.len() {
            Ok(())
        } else {
            self.err("the end of the statement")
        }
    }
}

/// Parses one statement; returns it with its number of bind markers.
pub(crate) fn parse(q: &str) -> Result<(Stmt, usize), SyntaxError> {
    let mut p = P {
        toks: tokenize(q)?,
        pos: 0,
        binds: 0,
    };
    let stmt = if p.kw("create") {
        if p.kw("keyspace") {
            p.if_not_exists()?;
            let name = p.ident()?;
            p.skip_with();
            Stmt::CreateKeyspace { name }
        } else if p.kw("table") {
            p.if_not_exists()?;
            let (ks, table) = p.qualified()?;
            p.expect_sym("(")?;
            let mut columns = Vec::new();
            let (mut partition, mut clustering) = (Vec::new(), Vec::new());
            loop {
                if p.kw("primary") {
                    p.expect_kw("key")?;
                    p.expect_sym("(")?;
                    if p.sym("(") {
                        partition = p.list(P::ident)?;
                        p.expect_sym(")")?;
                    } else {
                        partition = vec![p.ident()?];
                    }
                    while p.sym(",") {
                        clustering.push(p.ident()?);
                    }
                    p.expect_sym(")")?;
                } else {
                    let name = p.ident()?;
                    let ty = p.ident()?;
                    let ty = CqlType::parse(&ty)
                        .ok_or_else(|| SyntaxError(format!("type {ty} is not supported")))?;
                    if p.kw("primary") {
                        p.expect_kw("key")?;
                        partition = vec![name.clone()];
                    }
                    columns.push((name, ty));
                }
                if !p.sym(",") {
                    break;
                }
            }
            p.expect_sym(")")?;
            p.skip_with();
            if partition.is_empty() {
                return Err(SyntaxError("a table needs a primary key".into()));
            }
            Stmt::CreateTable {
                ks,
                table,
                columns,
                partition,
                clustering,
            }
        } else {
            return p.err("KEYSPACE or TABLE");
        }
    } else if p.kw("insert") {
        p.expect_kw("into")?;
        let (ks, table) = p.qualified()?;
        p.expect_sym("(")?;
        let columns = p.list(P::ident)?;
        p.expect_sym(")")?;
        p.expect_kw("values")?;
        p.expect_sym("(")?;
        let values = p.list(P::term)?;
        p.expect_sym(")")?;
        let if_not_exists = p.if_not_exists()?;
        let using = p.using()?;
        if columns.len() != values.len() {
            return Err(SyntaxError("column and value counts differ".into()));
        }
        Stmt::Insert {
            ks,
            table,
            columns,
            values,
            if_not_exists,
            using,
        }
    } else if p.kw("select") {
        let columns = if p.sym("*") {
            None
        } else {
            Some(p.list(P::ident)?)
        };
        p.expect_kw("from")?;
        let (ks, table) = p.qualified()?;
        let rels = if p.kw("where") { p.rels()? } else { Vec::new() };
        let mut desc = false;
        if p.kw("order") {
            p.expect_kw("by")?;
            p.ident()?;
            desc = p.kw("desc");
            if !desc {
                p.kw("asc");
            }
        }
        let limit = if p.kw("limit") { Some(p.term()?) } else { None };
        Stmt::Select {
            ks,
            table,
            columns,
            rels,
            desc,
            limit,
        }
    } else if p.kw("update") {
        let (ks, table) = p.qualified()?;
        let using = p.using()?;
        p.expect_kw("set")?;
        let set = p.list(|p| {
            let c = p.ident()?;
            p.expect_sym("=")?;
            Ok((c, p.term()?))
        })?;
        p.expect_kw("where")?;
        let rels = p.rels()?;
        let mut conditions = Vec::new();
        if p.kw("if") {
            loop {
                let c = p.ident()?;
                p.expect_sym("=")?;
                conditions.push((c, p.term()?));
                if !p.kw("and") {
                    break;
                }
            }
        }
        Stmt::Update {
            ks,
            table,
            set,
            rels,
            using,
            conditions,
        }
    } else if p.kw("delete") {
        p.expect_kw("from")?;
        let (ks, table) = p.qualified()?;
        let using = p.using()?;
        p.expect_kw("where")?;
        let rels = p.rels()?;
        Stmt::Delete {
            ks,
            table,
            rels,
            using,
        }
    } else {
        return p.err("a statement the double executes");
    };
    p.done()?;
    Ok((stmt, p.binds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subset() {
        let (s, n) = parse("CREATE TABLE IF NOT EXISTS fg.ts_kv (tenant text, device text, ts bigint, v double, PRIMARY KEY ((tenant, device), ts)) WITH CLUSTERING ORDER BY (ts ASC)").unwrap();
        assert_eq!(n, 0);
        assert!(
            matches!(s, Stmt::CreateTable { ref partition, ref clustering, .. } if partition.len() == 2 && clustering == &["ts"])
        );
        let (s, n) = parse(
            "INSERT INTO fg.t (a, b) VALUES (?, 'it''s') IF NOT EXISTS USING TTL ? AND TIMESTAMP 5",
        )
        .unwrap();
        assert_eq!(n, 2);
        let Stmt::Insert {
            values,
            if_not_exists,
            using,
            ..
        } = s
        else {
            panic!()
        };
        assert_eq!(values[1], Term::Lit(Literal::Str("it's".into())));
        assert!(if_not_exists);
        assert_eq!(using.timestamp, Some(Term::Lit(Literal::Int(5))));
        let (s, n) = parse(
            "SELECT a, b FROM fg.t WHERE a = ? AND ts >= ? AND ts < ? ORDER BY ts DESC LIMIT ?",
        )
        .unwrap();
        assert_eq!(n, 4);
        assert!(matches!(s, Stmt::Select { desc: true, ref rels, .. } if rels.len() == 3));
        assert!(parse("SELECT * FROM t").is_err(), "unqualified table");
        assert!(parse("DROP TABLE fg.t").is_err());
        assert!(parse("SELECT a FROM fg.t WHERE a = ? garbage").is_err());
        assert!(parse("CREATE TABLE fg.t (a counter PRIMARY KEY)").is_err());
        assert!(parse("INSERT INTO fg.t (a, b) VALUES (?)").is_err());
    }
}
