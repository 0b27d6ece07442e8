// The JSON-schema option flags (read by src/constraint/ir.rs, src/ffi/constraint.rs and build.rs;
// see src/c_enum.rs). Bits of maze_constraint_desc.json_flags; the names are the keys of a
// constraint's `json_options` in the JSON form.
c_enum! {
    /// One boolean of [`JsonSchemaOptions`], as a bit of `maze_constraint_desc.json_flags`.
    pub enum JsonFlag;
    /// Bits of maze_constraint_desc.json_flags (OR them; 0 keeps the defaults: compact JSON,
    /// unsupported keywords refused, unknown formats ignored as annotations).
    c enum maze_json_flag;
    /// Compile keywords Maze cannot enforce (not, if/then/else, dependencies, ...) by leaving
    /// them out; the validation report lists each with its JSON pointer and the outcome is
    /// "partially_enforced", not satisfied.
    Lenient = 1 => "lenient",
    /// Approximate a oneOf whose branches are not provably disjoint with anyOf (reported as a
    /// relaxed keyword); without it such a schema is refused.
    CoerceOneOf = 2 => "coerce_one_of",
    /// Allow JSON whitespace between tokens (default: compact JSON).
    WhitespaceFlexible = 4 => "whitespace_flexible",
    /// Refuse a format Maze does not enforce instead of ignoring it as an annotation.
    StrictFormats = 8 => "strict_formats",
}
