//! JSON schemas derived from Zig types at compile time, matching what std.json parses.
//!
//! - bool → boolean; integers → integer with the type's range (up to 53 bits, beyond which
//!   JSON numbers lose precision: only the sign bound is kept; a maze_fields minimum/maximum
//!   replaces the type's, and must stay inside it); floats → number;
//!   []const u8 → string; enums → string enum of the tag names; slices → array; arrays →
//!   array of exactly that length ([N]u8: a string of N ASCII characters); ?T → T or null;
//!   structs → objects with additionalProperties false, fields with a default value optional,
//!   the others required; tagged unions → one of {"tag": payload}.
//! - A type may give its own schema: `pub const maze_schema = "{...}";`.
//! - A struct may add keywords to its fields: `pub const maze_fields = .{ .title =
//!   .{ .maxLength = 60 }, .tags = .{ .maxItems = 3, .items = .{ .maxLength = 12 } } };`
//!   (`items` applies to an array field's elements; keywords of a ?T field go to the T).
const std = @import("std");

/// The JSON schema of T, computed at compile time.
pub fn schemaOf(comptime T: type) []const u8 {
    return comptime schemaWith(T, "");
}

/// `schema_text` with llguidance's compact-whitespace extension: no free whitespace between
/// tokens, so the model writes fewer tokens.
pub fn compact(comptime schema_text: []const u8) []const u8 {
    comptime {
        std.debug.assert(schema_text[schema_text.len - 1] == '}');
        const sep = if (schema_text.len == 2) "" else ",";
        return schema_text[0 .. schema_text.len - 1] ++ sep ++ "\"x-guidance\":{\"whitespace_flexible\":false}}";
    }
}

/// The schema of T with `extra` (`,"key":value...`) added to its object.
fn schemaWith(comptime T: type, comptime extra: []const u8) []const u8 {
    if (std.meta.hasFn(T, "jsonParse")) @compileError("maze.schemaOf: " ++ @typeName(T) ++ " parses itself (jsonParse); give it `pub const maze_schema`");
    switch (@typeInfo(T)) {
        .@"struct", .@"enum", .@"union", .@"opaque" => if (@hasDecl(T, "maze_schema")) return withExtra(T.maze_schema, extra),
        else => {},
    }
    return switch (@typeInfo(T)) {
        .bool => obj("\"type\":\"boolean\"" ++ extra),
        .int => |info| obj("\"type\":\"integer\"" ++ intBounds(T, info, extra) ++ extra),
        .float => obj("\"type\":\"number\"" ++ extra),
        .@"enum" => |info| blk: {
            var names: []const u8 = "";
            for (info.field_names, 0..) |field_name, i| names = names ++ (if (i > 0) "," else "") ++ quote(field_name);
            break :blk obj("\"type\":\"string\",\"enum\":[" ++ names ++ "]" ++ extra);
        },
        .optional => |info| "{\"anyOf\":[" ++ schemaWith(info.child, extra) ++ ",{\"type\":\"null\"}]}",
        .pointer => |info| switch (info.size) {
            .one => schemaWith(info.child, extra),
            .slice => if (info.child == u8)
                obj("\"type\":\"string\"" ++ extra)
            else
                arrayOf(info.child, "", extra),
            else => unsupported(T),
        },
        .array => |info| if (info.child == u8)
            obj(std.fmt.comptimePrint("\"type\":\"string\",\"pattern\":\"^[ -~]{{{d}}}$\"", .{info.len}) ++ extra)
        else
            arrayOf(info.child, std.fmt.comptimePrint(",\"minItems\":{d},\"maxItems\":{d}", .{ info.len, info.len }), extra),
        .@"struct" => |info| if (info.is_tuple) unsupported(T) else structSchema(T, info, extra),
        .@"union" => |info| if (info.tag_type == null) unsupported(T) else unionSchema(info, extra),
        else => unsupported(T),
    };
}

fn unsupported(comptime T: type) []const u8 {
    @compileError("maze.schemaOf: " ++ @typeName(T) ++ " has no JSON schema (std.json cannot parse it)");
}

fn obj(comptime body: []const u8) []const u8 {
    if (std.mem.indexOfScalar(u8, body, 0) != null) @compileError("maze_fields: `items` keywords on a field that is not an array");
    return "{" ++ body ++ "}";
}

fn withExtra(comptime schema_text: []const u8, comptime extra: []const u8) []const u8 {
    if (extra.len == 0) return schema_text;
    return schema_text[0 .. schema_text.len - 1] ++ extra ++ "}";
}

/// The type's range, less the bounds that `extra` (maze_fields) sets itself.
fn intBounds(comptime T: type, comptime info: std.builtin.Type.Int, comptime extra: []const u8) []const u8 {
    const has_min = std.mem.indexOf(u8, extra, "\"minimum\"") != null;
    const has_max = std.mem.indexOf(u8, extra, "\"maximum\"") != null;
    const min = if (has_min) "" else if (info.bits <= 53 or info.signedness == .unsigned) std.fmt.comptimePrint(",\"minimum\":{d}", .{std.math.minInt(T)}) else "";
    const max = if (has_max or info.bits > 53) "" else std.fmt.comptimePrint(",\"maximum\":{d}", .{std.math.maxInt(T)});
    return min ++ max;
}

/// An array of E; `extra` keys go on the array, except `items` (from maze_fields), which is
/// already folded into `item_extra` by the caller.
fn arrayOf(comptime E: type, comptime bounds: []const u8, comptime extra: []const u8) []const u8 {
    const split = splitItems(extra);
    return obj("\"type\":\"array\",\"items\":" ++ schemaWith(E, split.items) ++ bounds ++ split.rest);
}

/// Keyword text for one field's keywords (a struct literal such as .{ .maxLength = 60 }).
fn keywords(comptime kw: anytype) []const u8 {
    var out: []const u8 = "";
    for (@typeInfo(@TypeOf(kw)).@"struct".field_names) |key| {
        const v = @field(kw, key);
        if (std.mem.eql(u8, key, "items")) {
            // Marked so arrayOf can route it to the elements.
            out = out ++ "\x00" ++ keywords(v) ++ "\x00";
            continue;
        }
        out = out ++ "," ++ quote(key) ++ ":" ++ value(v);
    }
    return out;
}

fn splitItems(comptime extra: []const u8) struct { items: []const u8, rest: []const u8 } {
    const start = std.mem.indexOfScalar(u8, extra, 0) orelse return .{ .items = "", .rest = extra };
    const end = std.mem.indexOfScalarPos(u8, extra, start + 1, 0).?;
    return .{ .items = extra[start + 1 .. end], .rest = extra[0..start] ++ extra[end + 1 ..] };
}

fn value(comptime v: anytype) []const u8 {
    const T = @TypeOf(v);
    return switch (@typeInfo(T)) {
        .int, .comptime_int => std.fmt.comptimePrint("{d}", .{v}),
        .float, .comptime_float => std.fmt.comptimePrint("{d}", .{v}),
        .bool => if (v) "true" else "false",
        .enum_literal => quote(@tagName(v)),
        .pointer => quote(v),
        .@"struct" => |info| blk: {
            if (info.is_tuple) {
                var out: []const u8 = "[";
                for (info.field_names, 0..) |n, i| out = out ++ (if (i > 0) "," else "") ++ value(@field(v, n));
                break :blk out ++ "]";
            }
            var out: []const u8 = "{";
            for (info.field_names, 0..) |n, i| out = out ++ (if (i > 0) "," else "") ++ quote(n) ++ ":" ++ value(@field(v, n));
            break :blk out ++ "}";
        },
        else => @compileError("maze.schemaOf: keyword value of type " ++ @typeName(T) ++ " is not JSON"),
    };
}

fn quote(comptime s: []const u8) []const u8 {
    var out: []const u8 = "\"";
    for (s) |ch| {
        out = out ++ switch (ch) {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\t' => "\\t",
            0...8, 11...31, 127 => std.fmt.comptimePrint("\\u{x:0>4}", .{ch}),
            else => &[_]u8{ch},
        };
    }
    return out ++ "\"";
}

fn structSchema(comptime T: type, comptime info: std.builtin.Type.Struct, comptime extra: []const u8) []const u8 {
    @setEvalBranchQuota(100_000);
    const field_keywords = if (@hasDecl(T, "maze_fields")) T.maze_fields else .{};
    for (@typeInfo(@TypeOf(field_keywords)).@"struct".field_names) |n| {
        if (!@hasField(T, n)) @compileError("maze_fields of " ++ @typeName(T) ++ " names no field '" ++ n ++ "'");
    }
    var props: []const u8 = "";
    var required: []const u8 = "";
    for (info.field_names, info.field_types, info.field_attrs, 0..) |n, F, attrs, i| {
        const kw = if (@hasField(@TypeOf(field_keywords), n)) keywords(@field(field_keywords, n)) else "";
        props = props ++ (if (i > 0) "," else "") ++ quote(n) ++ ":" ++ schemaWith(F, kw);
        if (attrs.default_value_ptr == null) required = required ++ (if (required.len > 0) "," else "") ++ quote(n);
    }
    const req = if (required.len > 0) ",\"required\":[" ++ required ++ "]" else "";
    return obj("\"type\":\"object\",\"properties\":{" ++ props ++ "}" ++ req ++ ",\"additionalProperties\":false" ++ extra);
}

fn unionSchema(comptime info: std.builtin.Type.Union, comptime extra: []const u8) []const u8 {
    var alternatives: []const u8 = "";
    for (info.field_names, info.field_types, 0..) |n, F, i| {
        const payload = if (F == void) "{\"type\":\"object\",\"additionalProperties\":false}" else schemaWith(F, "");
        alternatives = alternatives ++ (if (i > 0) "," else "") ++
            obj("\"type\":\"object\",\"properties\":{" ++ quote(n) ++ ":" ++ payload ++ "},\"required\":[" ++ quote(n) ++ "],\"additionalProperties\":false");
    }
    return obj("\"anyOf\":[" ++ alternatives ++ "]" ++ extra);
}
