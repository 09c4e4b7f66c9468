//! `where` JSON → [`Query`].
//!
//! Everything that can be wrong with a clause is detected here, so that evaluation is
//! infallible. The accepted language is Parse REST's: field names as in Parse
//! (`^[A-Za-z][A-Za-z0-9_.]*$`), the logical operators `$or`/`$and`/`$nor` (non-empty
//! arrays of clauses), `$relatedTo`, and per field either a value (equality) or an
//! operator object.

use serde_json::{Map, Value};

use crate::canonical::canonical;
use crate::date::parse_iso_millis;
use crate::error::QueryError;
use crate::geo::{EARTH_RADIUS_KM, EARTH_RADIUS_MILES};
use crate::js_regex;
use crate::query::{Cmp, Node, Path, Pred, Query, Subquery, SubqueryKind};
use crate::set::OperandSet;
use crate::value::Operand;

/// What to do with `$inQuery`, `$notInQuery`, `$select`, `$dontSelect` and `$relatedTo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubqueryPolicy {
    /// Reject them with a "not supported yet" error (the server has no database to
    /// resolve them against).
    #[default]
    Reject,
    /// Keep them in the compiled query; the caller must bind them with
    /// [`Query::bind_subqueries`] before evaluating (unbound ones never match).
    Represent,
}

/// Limits and policies for compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// Maximum nesting of `$or`/`$and`/`$nor` (and subqueries).
    pub max_depth: usize,
    /// Whether `$regex` is allowed (parse-server's `requestComplexity.allowRegex`).
    pub allow_regex: bool,
    /// Subquery handling.
    pub subqueries: SubqueryPolicy,
    /// Most items in one `$in`, `$nin`, `$all` or `$containedBy` operand.
    pub max_set_items: usize,
    /// Most conditions in one clause ([`Query::conditions`]): bounds the cost of one
    /// evaluation.
    pub max_conditions: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            max_depth: 16,
            allow_regex: true,
            subqueries: SubqueryPolicy::Reject,
            max_set_items: 10_000,
            max_conditions: 1_000,
        }
    }
}

impl Query {
    /// Compiles a `where` clause.
    pub fn compile(
        where_: &Map<String, Value>,
        options: &CompileOptions,
    ) -> Result<Self, QueryError> {
        Self::compile_at(where_, options, 0)
    }

    fn compile_at(
        where_: &Map<String, Value>,
        options: &CompileOptions,
        depth: usize,
    ) -> Result<Self, QueryError> {
        let mut compiler = Compiler {
            options,
            fields: Vec::new(),
            conditions: 0,
            regex_bytes: 0,
        };
        let root = compiler.clause(where_, depth)?;
        let mut fields = compiler.fields;
        fields.sort_unstable();
        fields.dedup();
        let pinned_object_id = match where_.get("objectId") {
            Some(Value::String(id)) => Some(id.as_str().into()),
            _ => None,
        };
        let object_id_lookup = pinned_object_id.clone().filter(|_| where_.len() == 1);
        Ok(Self {
            root,
            canonical: canonical(where_).into_boxed_str(),
            object_id_lookup,
            pinned_object_id,
            fields: fields.into_iter().map(String::into_boxed_str).collect(),
            conditions: compiler.conditions,
            bound_for: None,
        })
    }
}

struct Compiler<'o> {
    options: &'o CompileOptions,
    fields: Vec<String>,
    conditions: usize,
    /// Bytes of `$regex` patterns compiled so far in this clause: compiling costs time
    /// in the pattern's size (tens of milliseconds for a few kilobytes with `i`), so one
    /// clause gets the budget of one maximal pattern, however many conditions hold one.
    regex_bytes: usize,
}

fn is_field_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !key.ends_with('.')
        && !key.contains("..")
}

impl Compiler<'_> {
    /// Counts `n` more conditions; fails once the clause has more than allowed.
    fn count(&mut self, n: usize) -> Result<(), QueryError> {
        self.conditions = self.conditions.saturating_add(n);
        let max = self.options.max_conditions;
        if self.conditions > max {
            return Err(QueryError::TooComplex { max });
        }
        Ok(())
    }

    /// Checks the length of a set operand.
    fn set_items(&self, op: &str, items: usize) -> Result<(), QueryError> {
        let max = self.options.max_set_items;
        if items > max {
            return Err(QueryError::invalid(format!(
                "bad {op} value: {items} items, at most {max} are allowed"
            )));
        }
        Ok(())
    }

    fn clause(&mut self, where_: &Map<String, Value>, depth: usize) -> Result<Node, QueryError> {
        let mut conjuncts = Vec::with_capacity(where_.len());
        for (key, value) in where_ {
            let node = match key.as_str() {
                "$or" | "$and" | "$nor" => self.logical(key, value, depth)?,
                "$relatedTo" => self.related_to(value)?,
                _ if !is_field_name(key) => {
                    return Err(QueryError::invalid(format!("invalid key name: {key}")));
                }
                _ => {
                    let path = Path::new(key);
                    self.fields.push(path.head().to_owned());
                    let preds = self.constraint(&path, key, value, depth)?;
                    match preds {
                        Constraint::Never => Node::Const(false),
                        Constraint::Preds(preds) => Node::Field(path, preds.into_boxed_slice()),
                    }
                }
            };
            conjuncts.push(node);
        }
        Ok(if conjuncts.len() == 1 {
            conjuncts.pop().expect("one conjunct")
        } else {
            Node::And(conjuncts.into())
        })
    }

    fn logical(&mut self, op: &str, value: &Value, depth: usize) -> Result<Node, QueryError> {
        let depth = depth + 1;
        if depth > self.options.max_depth {
            return Err(QueryError::TooDeep {
                max: self.options.max_depth,
            });
        }
        let Value::Array(items) = value else {
            return Err(QueryError::NotAnArray {
                operator: op.to_owned(),
            });
        };
        if items.is_empty() {
            return Err(QueryError::EmptyLogical {
                operator: op.to_owned(),
            });
        }
        self.count(items.len())?;
        let mut branches = Vec::with_capacity(items.len());
        for item in items {
            let Value::Object(map) = item else {
                return Err(QueryError::NotAClause {
                    operator: op.to_owned(),
                    found: json_type(item),
                });
            };
            branches.push(self.clause(map, depth)?);
        }
        let branches = branches.into_boxed_slice();
        Ok(match op {
            "$or" => Node::Or(branches),
            "$and" => Node::And(branches),
            _ => Node::Nor(branches),
        })
    }

    fn related_to(&mut self, value: &Value) -> Result<Node, QueryError> {
        let bad = || {
            QueryError::invalid("bad $relatedTo value: expected {object: <Pointer>, key: <string>}")
        };
        let map = value.as_object().ok_or_else(bad)?;
        let object = map
            .get("object")
            .and_then(Value::as_object)
            .ok_or_else(bad)?;
        let (Some(class), Some(id)) = (
            object.get("className").and_then(Value::as_str),
            object.get("objectId").and_then(Value::as_str),
        ) else {
            return Err(bad());
        };
        let key = map.get("key").and_then(Value::as_str).ok_or_else(bad)?;
        self.count(1)?;
        let sub = self.subquery(
            SubqueryKind::RelatedTo,
            class,
            Map::new(),
            Some(key),
            Some(id),
            None,
        )?;
        Ok(Node::RelatedTo(Box::new(sub)))
    }

    fn subquery(
        &mut self,
        kind: SubqueryKind,
        class_name: &str,
        where_: Map<String, Value>,
        key: Option<&str>,
        owner_id: Option<&str>,
        inner: Option<Query>,
    ) -> Result<Subquery, QueryError> {
        let operator = match kind {
            SubqueryKind::InQuery => "$inQuery",
            SubqueryKind::NotInQuery => "$notInQuery",
            SubqueryKind::Select => "$select",
            SubqueryKind::DontSelect => "$dontSelect",
            SubqueryKind::RelatedTo => "$relatedTo",
        };
        if self.options.subqueries == SubqueryPolicy::Reject {
            return Err(QueryError::Unsupported {
                operator: operator.to_owned(),
                detail: " yet: subqueries need a database-backed source to resolve them".to_owned(),
            });
        }
        Ok(Subquery {
            kind,
            class_name: class_name.to_owned(),
            where_,
            key: key.map(str::to_owned),
            owner_id: owner_id.map(str::to_owned),
            inner: inner.map(Box::new),
            set: None,
        })
    }

    fn constraint(
        &mut self,
        path: &Path,
        key: &str,
        value: &Value,
        depth: usize,
    ) -> Result<Constraint, QueryError> {
        let date_strings = path.date_strings;
        let Some(ops) = value
            .as_object()
            .filter(|m| m.keys().any(|k| k.starts_with('$')))
        else {
            check_operand(value)?;
            self.count(1)?;
            return Ok(Constraint::Preds(vec![Pred::Eq(Operand::from_json(
                value,
                date_strings,
            ))]));
        };
        let mut preds = Vec::with_capacity(ops.len());
        let mut never = false;
        self.count(ops.len())?;
        for (op, v) in ops {
            let operand = |v: &Value| -> Result<Operand, QueryError> {
                check_operand(v)?;
                Ok(Operand::from_json(v, date_strings))
            };
            match op.as_str() {
                "$eq" => preds.push(Pred::Eq(operand(v)?)),
                "$ne" => preds.push(Pred::Ne(operand(v)?)),
                "$lt" | "$lte" | "$gt" | "$gte" => {
                    let cmp = match op.as_str() {
                        "$lt" => Cmp::Lt,
                        "$lte" => Cmp::Lte,
                        "$gt" => Cmp::Gt,
                        _ => Cmp::Gte,
                    };
                    let operand = operand(v)?;
                    match operand {
                        // MongoDB: `$lte/$gte: null` mean "is null or missing";
                        // `$lt/$gt: null` match nothing.
                        Operand::Null if matches!(cmp, Cmp::Lte | Cmp::Gte) => {
                            preds.push(Pred::Eq(Operand::Null))
                        }
                        Operand::Null => never = true,
                        ref o if o.is_orderable() => preds.push(Pred::Cmp(cmp, operand)),
                        _ => return Err(QueryError::invalid(format!("bad {op} value: {v}"))),
                    }
                }
                "$in" | "$nin" => {
                    let items = v
                        .as_array()
                        .ok_or_else(|| QueryError::invalid(format!("bad {op} value")))?;
                    // parse-server's query transform flattens the operand one level:
                    // `$in: [[1, 2], 3]` means `$in: [1, 2, 3]`.
                    let flat = || {
                        items.iter().flat_map(|item| match item {
                            Value::Array(inner) => inner.as_slice(),
                            other => std::slice::from_ref(other),
                        })
                    };
                    self.set_items(op, flat().count())?;
                    let set = OperandSet::new(flat().map(operand).collect::<Result<_, _>>()?);
                    preds.push(if op == "$in" {
                        Pred::In(set)
                    } else {
                        Pred::Nin(set)
                    });
                }
                "$all" => {
                    let items = v
                        .as_array()
                        .ok_or_else(|| QueryError::invalid("bad $all value"))?;
                    self.set_items(op, items.len())?;
                    let mut values = Vec::with_capacity(items.len());
                    let mut regexes = Vec::new();
                    for item in items {
                        match item.as_object().and_then(|m| m.get("$regex")) {
                            Some(pattern) => {
                                // Each regex is scanned per evaluation: count it as a condition.
                                self.count(1)?;
                                let options = item.get("$options");
                                regexes.push(self.regex(pattern, options)?);
                            }
                            None => values.push(operand(item)?),
                        }
                    }
                    preds.push(Pred::All {
                        values: OperandSet::new(values),
                        regexes: regexes.into_boxed_slice(),
                    });
                }
                "$exists" => match v {
                    Value::Bool(b) => preds.push(Pred::Exists(*b)),
                    _ => return Err(QueryError::invalid("bad $exists value: expected a boolean")),
                },
                "$regex" => preds.push(Pred::Regex(self.regex(v, ops.get("$options"))?)),
                "$options" => {
                    if !ops.contains_key("$regex") {
                        return Err(QueryError::invalid(
                            "bad $options value: $options requires $regex",
                        ));
                    }
                }
                "$nearSphere" => {
                    let (lat, lng) =
                        geo_point(v).ok_or_else(|| QueryError::invalid("bad $nearSphere value"))?;
                    preds.push(Pred::Near {
                        lat,
                        lng,
                        max_radians: max_distance(ops)?,
                    });
                }
                "$maxDistance"
                | "$maxDistanceInRadians"
                | "$maxDistanceInKilometers"
                | "$maxDistanceInMiles" => {
                    if !ops.contains_key("$nearSphere") {
                        return Err(QueryError::invalid(format!(
                            "bad {op}: it requires $nearSphere"
                        )));
                    }
                }
                "$within" => preds.push(within(v)?),
                "$geoWithin" => preds.push(geo_within(v)?),
                "$geoIntersects" => {
                    let point = v
                        .as_object()
                        .and_then(|m| m.get("$point"))
                        .and_then(geo_point);
                    let (lat, lng) = point.ok_or_else(|| {
                        QueryError::invalid("bad $geoIntersects value; $point should be GeoPoint")
                    })?;
                    preds.push(Pred::Intersects { lat, lng });
                }
                "$containedBy" => {
                    let items = v.as_array().ok_or_else(|| {
                        QueryError::invalid("bad $containedBy: should be an array")
                    })?;
                    self.set_items(op, items.len())?;
                    preds.push(Pred::ContainedBy(OperandSet::new(
                        items.iter().map(operand).collect::<Result<_, _>>()?,
                    )));
                }
                "$inQuery" | "$notInQuery" => {
                    let (class, where_) = class_and_where(v).ok_or_else(|| {
                        QueryError::invalid(format!(
                            "bad {op} value: expected {{className, where}}"
                        ))
                    })?;
                    let kind = if op == "$inQuery" {
                        SubqueryKind::InQuery
                    } else {
                        SubqueryKind::NotInQuery
                    };
                    let inner = self.inner(op, &where_, depth)?;
                    preds.push(Pred::Subquery {
                        negated: op == "$notInQuery",
                        sub: Box::new(self.subquery(kind, &class, where_, None, None, inner)?),
                    });
                }
                "$select" | "$dontSelect" => {
                    let bad = || {
                        QueryError::invalid(format!(
                            "bad {op} value: expected {{query: {{className, where}}, key}}"
                        ))
                    };
                    let map = v.as_object().ok_or_else(bad)?;
                    let (class, where_) =
                        map.get("query").and_then(class_and_where).ok_or_else(bad)?;
                    let key = map.get("key").and_then(Value::as_str).ok_or_else(bad)?;
                    let kind = if op == "$select" {
                        SubqueryKind::Select
                    } else {
                        SubqueryKind::DontSelect
                    };
                    let inner = self.inner(op, &where_, depth)?;
                    preds.push(Pred::Subquery {
                        negated: op == "$dontSelect",
                        sub: Box::new(self.subquery(
                            kind,
                            &class,
                            where_,
                            Some(key),
                            None,
                            inner,
                        )?),
                    });
                }
                "$text" | "$elemMatch" | "$not" | "$size" | "$type" | "$mod" | "$where"
                | "$expr" => {
                    return Err(QueryError::Unsupported {
                        operator: op.clone(),
                        detail: " in live queries".to_owned(),
                    });
                }
                _ if op.starts_with('$') => {
                    return Err(QueryError::invalid(format!("bad constraint: {op}")));
                }
                _ => {
                    return Err(QueryError::invalid(format!(
                        "bad constraint: {op} (cannot mix operators and values in {key})"
                    )));
                }
            }
        }
        Ok(if never {
            Constraint::Never
        } else {
            Constraint::Preds(preds)
        })
    }

    /// Compiles a subquery's inner clause one level deeper, for its own class; its
    /// conditions count towards this clause's. `None` when subqueries are rejected anyway
    /// (`subquery()` then reports the operator itself, with a clearer message).
    fn inner(
        &mut self,
        op: &str,
        where_: &Map<String, Value>,
        depth: usize,
    ) -> Result<Option<Query>, QueryError> {
        let depth = depth + 1;
        if depth > self.options.max_depth {
            return Err(QueryError::TooDeep {
                max: self.options.max_depth,
            });
        }
        if self.options.subqueries == SubqueryPolicy::Reject {
            return Ok(None);
        }
        // A subquery inside a subquery would need a maintained set of its own.
        let options = CompileOptions {
            subqueries: SubqueryPolicy::Reject,
            max_conditions: self.options.max_conditions.saturating_sub(self.conditions),
            ..self.options.clone()
        };
        let inner = Query::compile_at(where_, &options, depth).map_err(|err| match err {
            QueryError::Unsupported { operator, .. } if is_subquery_operator(&operator) => {
                QueryError::Unsupported {
                    operator,
                    detail: format!(" inside {op}"),
                }
            }
            QueryError::TooComplex { .. } => QueryError::TooComplex {
                max: self.options.max_conditions,
            },
            other => other,
        })?;
        self.count(inner.conditions)?;
        Ok(Some(inner))
    }

    fn regex(
        &mut self,
        pattern: &Value,
        options: Option<&Value>,
    ) -> Result<regex::Regex, QueryError> {
        if !self.options.allow_regex {
            return Err(QueryError::RegexNotAllowed);
        }
        let Value::String(pattern) = pattern else {
            return Err(QueryError::InvalidRegex(
                "Invalid regular expression: $regex must be a string or RegExp".to_owned(),
            ));
        };
        self.regex_bytes = self.regex_bytes.saturating_add(pattern.len());
        if self.regex_bytes > js_regex::MAX_PATTERN_LEN {
            return Err(QueryError::RegexBudget {
                max: js_regex::MAX_PATTERN_LEN,
            });
        }
        let flags = match options {
            None | Some(Value::Null) => "",
            Some(Value::String(flags)) => flags,
            Some(_) => {
                return Err(QueryError::InvalidRegex(
                    "Invalid regular expression: $options must be a string".to_owned(),
                ));
            }
        };
        js_regex::compile(pattern, flags).map_err(QueryError::InvalidRegex)
    }
}

enum Constraint {
    Preds(Vec<Pred>),
    Never,
}

/// Rejects operands that would silently change meaning: `$relativeTime` (which needs a
/// clock at evaluation time) and dates with an unparseable `iso`.
fn check_operand(value: &Value) -> Result<(), QueryError> {
    match value {
        Value::Object(map) => {
            if map.contains_key("$relativeTime") {
                return Err(QueryError::Unsupported {
                    operator: "$relativeTime".to_owned(),
                    detail: " in live queries".to_owned(),
                });
            }
            if map.get("__type").and_then(Value::as_str) == Some("Date")
                && map
                    .get("iso")
                    .and_then(Value::as_str)
                    .and_then(parse_iso_millis)
                    .is_none()
            {
                return Err(QueryError::invalid(format!("bad Date value: {value}")));
            }
            map.values().try_for_each(check_operand)
        }
        Value::Array(items) => items.iter().try_for_each(check_operand),
        _ => Ok(()),
    }
}

/// The JSON type of a value, as error texts name it.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn is_subquery_operator(operator: &str) -> bool {
    matches!(
        operator,
        "$inQuery" | "$notInQuery" | "$select" | "$dontSelect" | "$relatedTo"
    )
}

fn class_and_where(value: &Value) -> Option<(String, Map<String, Value>)> {
    let map = value.as_object()?;
    let class = map.get("className")?.as_str()?.to_owned();
    let where_ = map.get("where")?.as_object()?.clone();
    Some((class, where_))
}

/// A GeoPoint operand (`{__type: GeoPoint, latitude, longitude}`) with valid ranges.
fn geo_point(value: &Value) -> Option<(f64, f64)> {
    let map = value.as_object()?;
    if map.get("__type").and_then(Value::as_str) != Some("GeoPoint") {
        return None;
    }
    let lat = map.get("latitude")?.as_f64()?;
    let lng = map.get("longitude")?.as_f64()?;
    valid_point(lat, lng).then_some((lat, lng))
}

fn valid_point(lat: f64, lng: f64) -> bool {
    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng)
}

/// The distance limit of a `$nearSphere`, in radians; the last limit given wins, as in
/// parse-server's REST transform, whatever the key order relative to `$nearSphere`.
fn max_distance(ops: &Map<String, Value>) -> Result<Option<f64>, QueryError> {
    let mut max = None;
    for (key, value) in ops {
        let scale = match key.as_str() {
            "$maxDistance" | "$maxDistanceInRadians" => 1.0,
            "$maxDistanceInKilometers" => EARTH_RADIUS_KM,
            "$maxDistanceInMiles" => EARTH_RADIUS_MILES,
            _ => continue,
        };
        let distance = value.as_f64().filter(|d| *d >= 0.0).ok_or_else(|| {
            QueryError::invalid(format!("bad {key} value: expected a non-negative number"))
        })?;
        max = Some(distance / scale);
    }
    Ok(max)
}

fn within(value: &Value) -> Result<Pred, QueryError> {
    let corners = value
        .as_object()
        .and_then(|m| m.get("$box"))
        .and_then(Value::as_array);
    let bad = || {
        QueryError::invalid("bad $within value: expected {$box: [southwest, northeast]} GeoPoints")
    };
    let [sw, ne] = corners.map(Vec::as_slice).ok_or_else(bad)? else {
        return Err(bad());
    };
    let ((south, west), (north, east)) = (
        geo_point(sw).ok_or_else(bad)?,
        geo_point(ne).ok_or_else(bad)?,
    );
    if south > north {
        return Err(QueryError::invalid(
            "bad $within value: the southwest corner must not be north of the northeast corner",
        ));
    }
    // west > east describes a box across the antimeridian.
    Ok(Pred::Box {
        south,
        west,
        north,
        east,
    })
}

fn geo_within(value: &Value) -> Result<Pred, QueryError> {
    let map = value
        .as_object()
        .ok_or_else(|| QueryError::invalid("bad $geoWithin value"))?;
    if let Some(polygon) = map.get("$polygon") {
        let bad = || {
            QueryError::invalid(
                "bad $geoWithin value; $polygon should be a Polygon object or an array of at least 3 GeoPoints",
            )
        };
        let vertices: Vec<(f64, f64)> = match polygon {
            Value::Object(p) if p.get("__type").and_then(Value::as_str) == Some("Polygon") => p
                .get("coordinates")
                .and_then(Value::as_array)
                .ok_or_else(bad)?
                .iter()
                .map(|c| match c.as_array().map(Vec::as_slice) {
                    Some([lat, lng]) => lat
                        .as_f64()
                        .zip(lng.as_f64())
                        .filter(|(la, lo)| valid_point(*la, *lo)),
                    _ => None,
                })
                .collect::<Option<_>>()
                .ok_or_else(bad)?,
            Value::Array(points) => points
                .iter()
                .map(|point| match point {
                    // REST accepts raw `[longitude, latitude]` pairs (MongoDB order).
                    Value::Array(pair) => match pair.as_slice() {
                        [lng, lat] => lat
                            .as_f64()
                            .zip(lng.as_f64())
                            .filter(|(la, lo)| valid_point(*la, *lo)),
                        _ => None,
                    },
                    other => geo_point(other),
                })
                .collect::<Option<_>>()
                .ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if vertices.len() < 3 {
            return Err(bad());
        }
        return Ok(Pred::Polygon(vertices.into()));
    }
    if let Some(center_sphere) = map.get("$centerSphere") {
        let bad = || {
            QueryError::invalid(
                "bad $geoWithin value; $centerSphere should be [[longitude, latitude] or GeoPoint, radius in radians]",
            )
        };
        let [center, radius] = center_sphere
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(bad)?
        else {
            return Err(bad());
        };
        let (lat, lng) = match center {
            Value::Array(pair) => match pair.as_slice() {
                [lng, lat] => lat
                    .as_f64()
                    .zip(lng.as_f64())
                    .filter(|(la, lo)| valid_point(*la, *lo))
                    .ok_or_else(bad)?,
                _ => return Err(bad()),
            },
            other => geo_point(other).ok_or_else(bad)?,
        };
        let radius = radius.as_f64().filter(|r| *r >= 0.0).ok_or_else(bad)?;
        return Ok(Pred::CenterSphere { lat, lng, radius });
    }
    Err(QueryError::invalid(
        "bad $geoWithin value; expected $polygon or $centerSphere",
    ))
}
