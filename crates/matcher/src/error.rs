//! Why a `where` clause could not be compiled.

/// A `where` clause that cannot be compiled. Every variant is reported to the client as
/// an error frame with code 102 (`Parse.Error.INVALID_QUERY`) and the variant's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// A `$regex`/`$options` pair that does not compile (V8-style message).
    #[error("{0}")]
    InvalidRegex(String),
    /// `$or`, `$and` or `$nor` whose value is not an array (the reference's text).
    #[error("{operator} must be an array")]
    NotAnArray {
        /// The logical operator.
        operator: String,
    },
    /// `$or`, `$and` or `$nor` with an empty array (MongoDB rejects them).
    #[error("{operator} must be a non-empty array")]
    EmptyLogical {
        /// The logical operator.
        operator: String,
    },
    /// An entry of `$or`, `$and` or `$nor` that is not a clause (an object).
    #[error("{operator} entries must be objects (query clauses), found {found}")]
    NotAClause {
        /// The logical operator.
        operator: String,
        /// The JSON type found (`null`, `a number`, …).
        found: &'static str,
    },
    /// The `$regex` patterns of one clause are longer than one maximal pattern together.
    #[error("bad $regex: the patterns of one query may total at most {max} bytes")]
    RegexBudget {
        /// The budget, in bytes.
        max: usize,
    },
    /// `$or`/`$and`/`$nor` nested deeper than allowed.
    #[error("Query condition nesting depth exceeds maximum allowed depth of {max}")]
    TooDeep {
        /// The configured maximum.
        max: usize,
    },
    /// A clause with more conditions than allowed (see `CompileOptions::max_conditions`).
    #[error("Query is too complex: more than {max} conditions")]
    TooComplex {
        /// The configured maximum.
        max: usize,
    },
    /// `$regex` used while regular expressions are disabled for this client.
    #[error("$regex operator is not allowed")]
    RegexNotAllowed,
    /// A Parse operator this server does not (yet) evaluate; never silently ignored.
    #[error("{operator} is not supported{detail}")]
    Unsupported {
        /// The operator.
        operator: String,
        /// Why, starting with a separator (e.g. `" yet: …"`), or empty.
        detail: String,
    },
    /// Anything else Parse REST would reject (`bad constraint: $foo`, `bad $in value`, …).
    #[error("{0}")]
    Invalid(String),
}

impl QueryError {
    /// The Parse error code sent with this error (102, `INVALID_QUERY`).
    pub const fn code(&self) -> u32 {
        102
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}
