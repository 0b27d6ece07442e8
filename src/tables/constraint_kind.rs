// The constraint-kind table (read by src/constraint/ir.rs, src/ffi/constraint.rs and build.rs;
// see src/c_enum.rs). The names are also the keys of the JSON form (`ConstraintKind`'s serde).
c_enum! {
    /// Which kind a constraint is, without its content (see [`ConstraintKind::tag`]).
    pub enum ConstraintTag;
    /// Constraint kinds, for maze_constraint_desc.kind.
    c enum maze_constraint_kind;
    /// `text`: a JSON schema document.
    JsonSchema = 0 => "json_schema",
    /// `text`: a grammar in llguidance's Lark syntax.
    Lark = 1 => "lark",
    /// `items`: regular expressions; the output must match every one.
    Regex = 2 => "regex",
    /// `allowed_tokens` (empty = all) and `forbidden_tokens`.
    TokenMask = 3 => "token_mask",
    /// `items`: the output is exactly one of these strings.
    Choice = 4 => "choice",
    /// `text`: a grammar in llama.cpp's GBNF syntax (converted to Lark, see docs/CONSTRAINTS.md).
    Gbnf = 5 => "gbnf",
}
