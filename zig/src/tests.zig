//! `zig build test`: the Zig module on the default model (build option `model`).
const std = @import("std");
const maze = @import("maze");
const build_options = @import("build_options");
const testing = std.testing;
const c = maze.c;

var shared_engine: ?maze.Engine = null;
/// The shared engine's Diagnostic, which it keeps (so it lives as long as the engine).
var shared_diag: maze.Diagnostic = .{};

/// One engine for the tests (loading once keeps the suite quick); the process exit frees it.
fn engine() !*maze.Engine {
    if (shared_engine == null) {
        shared_engine = maze.Engine.init(build_options.model, .{ .threads = 2, .seed = 7, .diag = &shared_diag }) catch |e| {
            std.debug.print("loading {s}: {s} ({s}); run `make model` or pass -Dmodel=PATH\n", .{ build_options.model, @errorName(e), shared_diag.message() });
            return e;
        };
    }
    return &shared_engine.?;
}

fn greedy(max_tokens: u32) maze.GenerateOptions {
    return .{ .temperature = 0, .max_tokens = max_tokens };
}

/// The header's name of a member: `busy` of Status is MAZE_STATUS_BUSY.
fn enumeratorName(comptime prefix: []const u8, comptime member: []const u8) []const u8 {
    comptime {
        @setEvalBranchQuota(10_000);
        var name: [prefix.len + member.len]u8 = undefined;
        @memcpy(name[0..prefix.len], prefix);
        for (member, prefix.len..) |ch, i| name[i] = std.ascii.toUpper(ch);
        const final = name;
        return &final;
    }
}

/// Checks a Zig copy of a C enum against the header (translate-c): every enumerator with
/// `prefix` is a member of the same value, and the enum has no other.
fn expectMirrorsHeader(comptime E: type, comptime prefix: []const u8) !void {
    @setEvalBranchQuota(1_000_000);
    var enumerators: usize = 0;
    inline for (@typeInfo(c).@"struct".decl_names) |name| {
        if (comptime std.mem.startsWith(u8, name, prefix)) enumerators += 1;
    }
    const info = @typeInfo(E).@"enum";
    try testing.expectEqual(info.field_names.len, enumerators);
    inline for (info.field_names, info.field_values) |name, value| {
        try testing.expectEqual(value, @field(c, enumeratorName(prefix, name)));
    }
}

test "Status mirrors the header's status codes and the library's names" {
    try expectMirrorsHeader(maze.Status, "MAZE_STATUS_");
    const info = @typeInfo(maze.Status).@"enum";
    inline for (info.field_names) |member| {
        try testing.expectEqualStrings(comptime enumeratorName("MAZE_STATUS_", member), @field(maze.Status, member).name());
    }
    // What the library names is a Status (a status new in the library fails here).
    var v: i32 = -1;
    while (v < 256) : (v += 1) {
        const name = std.mem.span(c.maze_status_name(v));
        if (std.mem.eql(u8, name, "MAZE_STATUS_UNKNOWN")) continue;
        var known = false;
        inline for (info.field_names, info.field_values) |member, value| {
            if (value == v and std.mem.eql(u8, name, comptime enumeratorName("MAZE_STATUS_", member))) known = true;
        }
        if (!known) std.debug.print("the library names status {d} {s}, which maze.Status lacks\n", .{ v, name });
        try testing.expect(known);
    }
}

test "FinishReason mirrors the header's finish reasons and the library's names" {
    try expectMirrorsHeader(maze.FinishReason, "MAZE_FINISH_REASON_");
    const info = @typeInfo(maze.FinishReason).@"enum";
    var v: i32 = -1;
    while (v < 256) : (v += 1) {
        const name = std.mem.span(c.maze_finish_reason_name(v));
        if (std.mem.eql(u8, name, "unknown")) continue;
        var known = false;
        inline for (info.field_names, info.field_values) |member, value| {
            if (value == v and std.mem.eql(u8, name, member)) known = true;
        }
        if (!known) std.debug.print("the library names finish reason {d} {s}, which maze.FinishReason lacks\n", .{ v, name });
        try testing.expect(known);
    }
}

test "the constraint descriptor's layout is checked against the header" {
    try testing.expect(maze.layoutMismatch(maze.ConstraintDesc, c.maze_constraint_desc) == null);
    // A drifted copy is caught: a field missing, a field moved, a field resized.
    const Missing = extern struct { struct_size: u32, kind: u32, priority: i32, reserved: u32, name: maze.String, text: maze.String, items: ?*anyopaque, n_items: usize };
    const Moved = extern struct { kind: u32, struct_size: u32, priority: i32, reserved: u32, name: maze.String, text: maze.String, items: ?*anyopaque, n_items: usize, allowed_tokens: ?*anyopaque, n_allowed_tokens: usize, forbidden_tokens: ?*anyopaque, n_forbidden_tokens: usize };
    const Resized = extern struct { struct_size: u32, kind: u32, priority: i64, name: maze.String, text: maze.String, items: ?*anyopaque, n_items: usize, allowed_tokens: ?*anyopaque, n_allowed_tokens: usize, forbidden_tokens: ?*anyopaque, n_forbidden_tokens: usize };
    inline for (.{ Missing, Moved, Resized }) |Drifted| {
        try testing.expect(comptime maze.layoutMismatch(Drifted, c.maze_constraint_desc) != null);
    }
    const d = c.maze_constraint_desc_default();
    try testing.expectEqual(@as(u32, @sizeOf(maze.ConstraintDesc)), d.struct_size);
}

test "load: model facts" {
    const e = try engine();
    const info = e.info();
    try testing.expectEqualStrings("llama", info.architecture);
    try testing.expectEqual(@as(u32, 49152), info.vocab_size);
    try testing.expect(info.has_chat_template);
    try testing.expect(e.isEndOfGeneration(info.eos_token.?));
    try testing.expect(maze.version().len >= 5);
}

test "tokenize, detokenize and the chat template" {
    const e = try engine();
    const a = testing.allocator;
    const text = "Hello, Zig! Ünïcödé 12345";
    const ids = try e.tokenize(a, text, .{});
    defer a.free(ids);
    try testing.expect(ids.len > 5);
    const back = try e.detokenize(a, ids, null);
    defer a.free(back);
    try testing.expectEqualStrings(text, back);
    // A run of spaces is one long token: the first buffer guess is too small and must grow.
    const spaces: [64]u8 = @splat(' ');
    const space_ids = try e.tokenize(a, &spaces, .{});
    defer a.free(space_ids);
    const space_back = try e.detokenize(a, space_ids, null);
    defer a.free(space_back);
    try testing.expectEqualStrings(&spaces, space_back);

    const rendered = try e.applyChatTemplate(a, &.{.{ .role = "user", .content = "Hi" }}, true, null);
    defer a.free(rendered);
    try testing.expect(std.mem.indexOf(u8, rendered, "<|im_start|>user\nHi<|im_end|>") != null);
    try testing.expect(std.mem.endsWith(u8, rendered, "<|im_start|>assistant\n"));
}

test "score" {
    const e = try engine();
    const a = testing.allocator;
    const ids = try e.tokenize(a, "The quick brown fox jumps over the lazy dog", .{ .add_special = true });
    defer a.free(ids);
    const scores = try e.score(a, ids, null);
    defer a.free(scores);
    try testing.expectEqual(ids.len - 1, scores.len);
    for (scores) |lp| try testing.expect(lp <= 0 and lp > -100);
    const prefix = try e.score(a, ids[0..3], null);
    defer a.free(prefix);
    try testing.expectApproxEqAbs(scores[1], prefix[1], 1e-3);
    var diag: maze.Diagnostic = .{};
    try testing.expectError(error.InvalidArgument, e.score(a, ids[0..1], &diag));
    try testing.expect(std.mem.indexOf(u8, diag.message(), "at least 2 tokens") != null);
}

test "chat" {
    const question: maze.Message = .{ .role = "user", .content = "What is the capital of France? Answer in one word." };
    const e = try engine();
    var s = try e.session(null);
    defer s.deinit();
    var opts = greedy(32);
    opts.logprobs = true;
    var r = try s.generate(testing.allocator, .{ .messages = &.{question} }, opts);
    defer r.deinit();
    try testing.expect(std.mem.indexOf(u8, r.text, "Paris") != null);
    try testing.expectEqual(maze.FinishReason.stop, r.finish_reason);
    try testing.expectEqual(r.tokens.len, r.generated_tokens);
    try testing.expectEqual(r.tokens.len, r.logprobs.?.len);
    try testing.expect(r.prompt_tokens > 20 and r.total_time_ms > 0);
    try testing.expect(r.constraints_satisfied);
    try testing.expect(r.failure == null);
    try testing.expect(std.mem.indexOf(u8, r.provenance_json, "\"seed\"") != null);

    // ignore_eos: the one-word answer's end token no longer stops it; max_tokens does.
    var other = try e.session(null);
    defer other.deinit();
    var long = greedy(32);
    long.ignore_eos = true;
    var past = try other.generate(testing.allocator, .{ .messages = &.{question} }, long);
    defer past.deinit();
    try testing.expectEqual(maze.FinishReason.length, past.finish_reason);
    try testing.expectEqual(@as(usize, 32), past.tokens.len);
    try testing.expect(std.mem.startsWith(u8, past.text, r.text));

    // The follow-up reuses the cached conversation.
    var next = try s.generate(testing.allocator, .{ .messages = &.{
        question,
        .{ .role = "assistant", .content = r.text },
        .{ .role = "user", .content = "And of Italy?" },
    } }, greedy(12));
    defer next.deinit();
    try testing.expect(next.cached_tokens >= r.prompt_tokens);
    try s.reset(null);
}

const Collector = struct {
    text: std.ArrayList(u8) = .empty,
    pieces: usize = 0,
    stop_after: usize = std.math.maxInt(usize),
    failed: bool = false,

    fn onText(self: *Collector, piece: []const u8) bool {
        self.text.appendSlice(testing.allocator, piece) catch {
            self.failed = true;
            return false;
        };
        self.pieces += 1;
        return self.pieces < self.stop_after;
    }
};

test "stream: the pieces make the text; returning false stops" {
    const e = try engine();
    var s = try e.session(null);
    defer s.deinit();
    var all: Collector = .{};
    defer all.text.deinit(testing.allocator);
    var r = try s.generateStreaming(testing.allocator, .{ .prompt = "The history of Rome" }, greedy(30), &all, Collector.onText);
    defer r.deinit();
    try testing.expect(!all.failed and all.pieces > 5);
    try testing.expectEqualStrings(r.text, all.text.items);

    var some: Collector = .{ .stop_after = 3 };
    defer some.text.deinit(testing.allocator);
    var cut = try s.generateStreaming(testing.allocator, .{ .prompt = "The history of Rome" }, greedy(200), &some, Collector.onText);
    defer cut.deinit();
    try testing.expectEqual(maze.FinishReason.cancelled, cut.finish_reason);
    try testing.expectEqualStrings(cut.text, some.text.items);
    try testing.expect(cut.generated_tokens < 200);
}

const CancelFromThread = struct {
    session: *const maze.Session,
    started: std.atomic.Value(bool) = .init(false),

    fn onText(self: *CancelFromThread, _: []const u8) bool {
        self.started.store(true, .release);
        return true;
    }

    fn canceller(self: *CancelFromThread) void {
        while (!self.started.load(.acquire)) std.atomic.spinLoopHint();
        self.session.cancel();
    }
};

test "cancel from another thread; timeout; busy" {
    const e = try engine();
    var s = try e.session(null);
    defer s.deinit();
    var state: CancelFromThread = .{ .session = &s };
    const thread = try std.Thread.spawn(.{}, CancelFromThread.canceller, .{&state});
    var r = try s.generateStreaming(testing.allocator, .{ .prompt = "The history of Rome" }, greedy(2000), &state, CancelFromThread.onText);
    thread.join();
    defer r.deinit();
    try testing.expectEqual(maze.FinishReason.cancelled, r.finish_reason);
    try testing.expect(r.generated_tokens < 2000);

    var opts = greedy(2000);
    opts.timeout_ms = 150;
    var timed = try s.generate(testing.allocator, .{ .prompt = "The history of Rome" }, opts);
    defer timed.deinit();
    try testing.expectEqual(maze.FinishReason.timeout, timed.finish_reason);

    // A second generation on a busy session is refused, and so is reset.
    const Busy = struct {
        session: *const maze.Session,
        generate_error: ?maze.Error = null,
        reset_error: ?maze.Error = null,
        fn onText(self: *@This(), _: []const u8) bool {
            if (self.generate_error == null) {
                if (self.session.generate(testing.allocator, .{ .prompt = "x" }, .{})) |res| {
                    var owned = res;
                    owned.deinit();
                } else |err| self.generate_error = err;
                self.session.reset(null) catch |err| {
                    self.reset_error = err;
                };
            }
            return false;
        }
    };
    var busy: Busy = .{ .session = &s };
    var b = try s.generateStreaming(testing.allocator, .{ .prompt = "Hello" }, greedy(50), &busy, Busy.onText);
    defer b.deinit();
    try testing.expectEqual(@as(?maze.Error, error.Busy), busy.generate_error);
    try testing.expectEqual(@as(?maze.Error, error.Busy), busy.reset_error);
}

fn expectSatisfied(r: *const maze.Result, name: []const u8) !void {
    if (!r.constraints_satisfied) std.debug.print("not satisfied: {s} (output {s})\n", .{ r.validation_json, r.text });
    try testing.expect(r.constraints_satisfied);
    var buf: [96]u8 = undefined;
    try testing.expect(std.mem.indexOf(u8, r.validation_json, try std.fmt.bufPrint(&buf, "\"name\":\"{s}\"", .{name})) != null);
}

fn constrained(constraints: []const maze.Constraint, prompt: []const u8, max_tokens: u32) !maze.Result {
    const e = try engine();
    var s = try e.session(null);
    defer s.deinit();
    var opts = greedy(max_tokens);
    opts.constraints = constraints;
    return s.generate(testing.allocator, .{ .messages = &.{.{ .role = "user", .content = prompt }} }, opts);
}

test "every constraint kind through the struct path" {
    const a = testing.allocator;
    {
        const schema =
            \\{"type":"object","properties":{"name":{"type":"string","maxLength":20},"age":{"type":"integer","minimum":0,"maximum":150}},"required":["name","age"],"additionalProperties":false}
        ;
        var r = try constrained(&.{maze.Constraint.jsonSchema(schema).named("person")}, "Describe a person as JSON.", 80);
        defer r.deinit();
        try expectSatisfied(&r, "person");
        const Person = struct { name: []const u8, age: u8 };
        const parsed = try std.json.parseFromSlice(Person, a, r.text, .{});
        defer parsed.deinit();
        try testing.expect(parsed.value.name.len <= 20 and parsed.value.age <= 150);
    }
    {
        const grammar =
            \\start: "The answer is " NUMBER "."
            \\NUMBER: /[0-9]{1,3}/
        ;
        var r = try constrained(&.{maze.Constraint.lark(grammar).named("sentence")}, "What is 6 times 7?", 20);
        defer r.deinit();
        try expectSatisfied(&r, "sentence");
        try testing.expect(std.mem.startsWith(u8, r.text, "The answer is ") and std.mem.endsWith(u8, r.text, "."));
    }
    {
        const grammar =
            \\root ::= "The answer is " number "."
            \\number ::= [0-9]{1,3} # digits
        ;
        var r = try constrained(&.{maze.Constraint.gbnf(grammar).named("sentence")}, "What is 6 times 7?", 20);
        defer r.deinit();
        try expectSatisfied(&r, "sentence");
        try testing.expect(std.mem.startsWith(u8, r.text, "The answer is ") and std.mem.endsWith(u8, r.text, "."));
        try testing.expect(r.text.len >= "The answer is 0.".len and r.text.len <= "The answer is 000.".len);
    }
    {
        var r = try constrained(&.{maze.Constraint.regex(&.{ "[0-9]{4}-[0-9]{2}-[0-9]{2}", "2[0-9]{3}-.*" }).named("date")}, "Give a date.", 20);
        defer r.deinit();
        try expectSatisfied(&r, "date");
        try testing.expectEqual(@as(usize, 10), r.text.len);
        try testing.expect(r.text[0] == '2' and r.text[4] == '-' and r.text[7] == '-');
    }
    {
        const options = [_][]const u8{ "yes", "no", "maybe" };
        var r = try constrained(&.{maze.Constraint.choice(&options).named("answer")}, "Is the sky blue?", 10);
        defer r.deinit();
        try expectSatisfied(&r, "answer");
        var found = false;
        for (options) |o| found = found or std.mem.eql(u8, o, r.text);
        try testing.expect(found);
    }
    {
        const e = try engine();
        var digits: [11]u32 = undefined;
        for (0..10) |d| {
            const ids = try e.tokenize(a, &[_]u8{'0' + @as(u8, @intCast(d))}, .{});
            defer a.free(ids);
            try testing.expectEqual(@as(usize, 1), ids.len);
            digits[d] = ids[0];
        }
        digits[10] = e.info().eos_token.?;
        var r = try constrained(&.{maze.Constraint.tokenMask(&digits, &.{}).named("digits")}, "Write a word.", 8);
        defer r.deinit();
        try testing.expect(r.generated_tokens > 0);
        for (r.text) |ch| try testing.expect(std.ascii.isDigit(ch));

        var free = try constrained(&.{}, "Say hello.", 4);
        defer free.deinit();
        var banned = try constrained(&.{maze.Constraint.tokenMask(&.{}, free.tokens[0..1]).named("no-first")}, "Say hello.", 4);
        defer banned.deinit();
        try testing.expect(std.mem.indexOfScalar(u32, banned.tokens, free.tokens[0]) == null);
    }
}

test "JSON-schema options: lenient keywords and ignored formats are reported" {
    {
        const schema =
            \\{"type":"object","properties":{"n":{"type":"integer","minimum":0,"maximum":9}},"required":["n"],"additionalProperties":false,"not":{"required":["m"]}}
        ;
        var r = try constrained(&.{maze.Constraint.jsonSchema(schema).named("lenient").withJsonOptions(.{ .lenient = true })}, "Give a number as JSON.", 30);
        defer r.deinit();
        try testing.expect(!r.constraints_satisfied);
        try testing.expect(std.mem.indexOf(u8, r.validation_json, "\"partially_enforced\"") != null);
        try testing.expect(std.mem.indexOf(u8, r.validation_json, "\"pointer\":\"/not\"") != null);
    }
    {
        const schema =
            \\{"type":"object","properties":{"r":{"type":"string","format":"regex","maxLength":8}},"required":["r"],"additionalProperties":false}
        ;
        var r = try constrained(&.{maze.Constraint.jsonSchema(schema).named("formats")}, "Give a regex as JSON.", 40);
        defer r.deinit();
        try expectSatisfied(&r, "formats");
        try testing.expect(std.mem.indexOf(u8, r.validation_json, "\"ignored_formats\":[{\"format\":\"regex\",\"pointer\":\"/properties/r/format\"}]") != null);
    }
}

test "priority: the lower one is relaxed" {
    var r = try constrained(&.{
        maze.Constraint.regex(&.{"[0-9]{1,4}"}).named("number").withPriority(1),
        maze.Constraint.choice(&.{ "yes", "no" }).named("yesno").withPriority(-1),
    }, "Pick a number.", 8);
    defer r.deinit();
    try testing.expect(r.text.len > 0);
    for (r.text) |ch| try testing.expect(std.ascii.isDigit(ch));
    try testing.expect(!r.constraints_satisfied);
    try testing.expect(std.mem.indexOf(u8, r.validation_json, "\"relaxed\"") != null);
}

test "compiled sets are reusable and hit the cache" {
    const e = try engine();
    var set = try e.compileJson(testing.allocator, "{\"name\": \"color\", \"choice\": [\"red\", \"green\", \"blue\"]}", null);
    defer set.deinit();
    try testing.expectEqual(@as(usize, 1), set.count());
    var again = try e.compile(testing.allocator, &.{maze.Constraint.choice(&.{ "red", "green", "blue" }).named("color")}, null);
    defer again.deinit();
    var s = try e.session(null);
    defer s.deinit();
    for (0..2) |_| {
        var opts = greedy(5);
        opts.compiled = &.{&again};
        var r = try s.generate(testing.allocator, .{ .prompt = "My favourite colour is" }, opts);
        defer r.deinit();
        try expectSatisfied(&r, "color");
    }
}

const Recipe = struct {
    title: []const u8,
    cuisine: enum { italian, french, japanese, mexican },
    servings: u8,
    ingredients: []const []const u8,
    vegetarian: bool,
    rating: ?f32 = null,

    pub const maze_fields = .{
        .title = .{ .maxLength = 40 },
        .servings = .{ .minimum = 1, .maximum = 12 },
        .ingredients = .{ .minItems = 2, .maxItems = 4, .items = .{ .maxLength = 24 } },
    };
};

test "schemaOf" {
    const expected =
        \\{"type":"object","properties":{"title":{"type":"string","maxLength":40},"cuisine":{"type":"string","enum":["italian","french","japanese","mexican"]},"servings":{"type":"integer","minimum":1,"maximum":12},"ingredients":{"type":"array","items":{"type":"string","maxLength":24},"minItems":2,"maxItems":4},"vegetarian":{"type":"boolean"},"rating":{"anyOf":[{"type":"number"},{"type":"null"}]}},"required":["title","cuisine","servings","ingredients","vegetarian"],"additionalProperties":false}
    ;
    try testing.expectEqualStrings(expected, maze.schemaOf(Recipe));
    try testing.expectEqualStrings("{\"type\":\"integer\",\"minimum\":-32768,\"maximum\":32767}", maze.schemaOf(i16));
    try testing.expectEqualStrings("{\"type\":\"integer\"}", maze.schemaOf(i64));
    try testing.expectEqualStrings("{\"type\":\"array\",\"items\":{\"type\":\"number\"},\"minItems\":3,\"maxItems\":3}", maze.schemaOf([3]f64));
    try testing.expectEqualStrings("{\"type\":\"string\",\"pattern\":\"^[ -~]{4}$\"}", maze.schemaOf([4]u8));
    const Shape = union(enum) { circle: f32, none };
    try testing.expectEqualStrings(
        \\{"anyOf":[{"type":"object","properties":{"circle":{"type":"number"}},"required":["circle"],"additionalProperties":false},{"type":"object","properties":{"none":{"type":"object","additionalProperties":false}},"required":["none"],"additionalProperties":false}]}
    , maze.schemaOf(Shape));
    const Custom = struct {
        pub const maze_schema = "{\"type\":\"string\",\"format\":\"email\"}";
    };
    try testing.expectEqualStrings("{\"type\":\"string\",\"format\":\"email\"}", maze.schemaOf(Custom));
    // Every derived schema is JSON.
    inline for (.{ Recipe, Shape, [3]f64, ?[]const u8 }) |T| {
        try testing.expect(try std.json.validate(testing.allocator, maze.schemaOf(T)));
    }
}

test "typed output round trip" {
    const e = try engine();
    var s = try e.session(null);
    defer s.deinit();
    var typed = try maze.generateTyped(Recipe, testing.allocator, &s, .{ .messages = &.{.{ .role = "user", .content = "Give me a simple pasta recipe as JSON." }} }, greedy(200));
    defer typed.deinit();
    const recipe = typed.value();
    try testing.expect(recipe.title.len > 0 and recipe.title.len <= 40);
    try testing.expect(recipe.servings >= 1 and recipe.servings <= 12);
    try testing.expect(recipe.ingredients.len >= 2 and recipe.ingredients.len <= 4);
    // Compact JSON that std.json writes back the same way.
    try testing.expect(std.mem.indexOfScalar(u8, typed.result.text, '\n') == null);
    const written = try std.json.Stringify.valueAlloc(testing.allocator, recipe, .{ .emit_null_optional_fields = false });
    defer testing.allocator.free(written);
    const reparsed = try std.json.parseFromSlice(Recipe, testing.allocator, written, .{});
    defer reparsed.deinit();
    try testing.expectEqualStrings(recipe.title, reparsed.value.title);
    try testing.expectEqual(recipe.cuisine, reparsed.value.cuisine);

    // Cut by the token limit: error.Incomplete with the reason.
    var diag: maze.Diagnostic = .{};
    var opts = greedy(4);
    opts.diag = &diag;
    try testing.expectError(error.Incomplete, maze.generateTyped(Recipe, testing.allocator, &s, .{ .prompt = "Recipe:" }, opts));
    try testing.expect(std.mem.indexOf(u8, diag.message(), "length") != null);
}

test "a call without a Diagnostic reports to its session's, a session without one to its engine's" {
    const e = try engine();
    // The session's Diagnostic: generateTyped's reason, and the library's messages.
    var session_diag: maze.Diagnostic = .{};
    var s = try e.session(&session_diag);
    defer s.deinit();
    try testing.expectError(error.Incomplete, maze.generateTyped(Recipe, testing.allocator, &s, .{ .prompt = "Recipe:" }, greedy(4)));
    try testing.expect(std.mem.indexOf(u8, session_diag.message(), "ended (length) after") != null);
    try testing.expectEqual(maze.Status.ok, session_diag.status);
    try testing.expectError(error.InvalidArgument, s.generate(testing.allocator, .{ .prompt = "x" }, .{ .top_p = 0 }));
    try testing.expect(std.mem.indexOf(u8, session_diag.message(), "top_p") != null);
    try testing.expectEqual(maze.Status.invalid_argument, session_diag.status);
    // A call's own Diagnostic wins and leaves the session's alone.
    var own: maze.Diagnostic = .{};
    try testing.expectError(error.InvalidConstraint, s.generate(testing.allocator, .{ .prompt = "x" }, .{ .constraints = &.{maze.Constraint.regex(&.{"[0-9"})}, .diag = &own }));
    try testing.expectEqual(maze.Status.invalid_constraint, own.status);
    try testing.expect(std.mem.indexOf(u8, session_diag.message(), "top_p") != null);

    // An engine's Diagnostic (given to Engine.init): its own calls and its sessions opened
    // without one report there.
    var engine_diag: maze.Diagnostic = .{};
    var owned = try maze.Engine.init(build_options.model, .{ .threads = 1, .diag = &engine_diag });
    defer owned.deinit();
    const ids = [_]u32{1};
    try testing.expectError(error.InvalidArgument, owned.score(testing.allocator, &ids, null));
    try testing.expect(std.mem.indexOf(u8, engine_diag.message(), "at least 2 tokens") != null);
    var inheriting = try owned.session(null);
    defer inheriting.deinit();
    try testing.expectError(error.Incomplete, maze.generateTyped(Recipe, testing.allocator, &inheriting, .{ .prompt = "Recipe:" }, greedy(3)));
    try testing.expect(std.mem.indexOf(u8, engine_diag.message(), "ended (length) after") != null);
    try testing.expectError(error.InvalidConstraint, owned.compile(testing.allocator, &.{maze.Constraint.regex(&.{"[0-9"})}, null));
    try testing.expectEqual(maze.Status.invalid_constraint, engine_diag.status);
}

fn expectFailure(result: anytype, expected: maze.Error, diag: *const maze.Diagnostic, needle: []const u8) !void {
    if (result) |value| {
        _ = value;
        return error.TestExpectedError;
    } else |err| {
        try testing.expectEqual(expected, err);
        if (std.mem.indexOf(u8, diag.message(), needle) == null) {
            std.debug.print("message '{s}' lacks '{s}'\n", .{ diag.message(), needle });
            return error.TestUnexpectedMessage;
        }
    }
}

test "errors: bad model path, bad constraints, NULL-equivalents" {
    var diag: maze.Diagnostic = .{};
    try expectFailure(maze.Engine.init("/nonexistent/model.gguf", .{ .diag = &diag }), error.Io, &diag, "model.gguf");
    try testing.expectEqual(maze.Status.io, diag.status);
    try expectFailure(maze.Engine.init("", .{ .diag = &diag }), error.Io, &diag, "");
    // The tested library is a CPU build: a GPU is refused by name, not run on the CPU.
    try expectFailure(maze.Engine.init(build_options.model, .{ .gpu_device = 0, .diag = &diag }), error.Unsupported, &diag, "no CUDA support");

    const e = try engine();
    const bad = [_]struct { c: maze.Constraint, err: maze.Error, needle: []const u8 }{
        .{ .c = maze.Constraint.jsonSchema("{\"type\": \"object\",").named("broken"), .err = error.InvalidConstraint, .needle = "broken" },
        .{ .c = maze.Constraint.jsonSchema("{\"type\": \"array\", \"uniqueItems\": true}"), .err = error.InvalidConstraint, .needle = "uniqueItems" },
        .{ .c = maze.Constraint.regex(&.{"[0-9"}).named("digits"), .err = error.InvalidConstraint, .needle = "digits" },
        .{ .c = maze.Constraint.lark("start: undefined_rule"), .err = error.InvalidConstraint, .needle = "undefined_rule" },
        .{ .c = maze.Constraint.gbnf("root ::= \"a\"\nitem ::= [z-a]"), .err = error.InvalidConstraint, .needle = "GBNF line 2, column 11" },
        .{ .c = maze.Constraint.tokenMask(&.{1 << 30}, &.{}), .err = error.InvalidConstraint, .needle = "1073741824" },
        .{ .c = maze.Constraint.jsonSchema("{\"properties\": {\"a\": {\"not\": {}}}}"), .err = error.InvalidConstraint, .needle = "\"not\" at /properties/a/not" },
        .{ .c = maze.Constraint.jsonSchema("{\"type\": \"string\", \"format\": \"regex\"}").withJsonOptions(.{ .strict_formats = true }), .err = error.InvalidConstraint, .needle = "unknown format \"regex\" at /format" },
        .{ .c = maze.Constraint.lark("start: \"x\"").withJsonOptions(.{ .lenient = true }), .err = error.InvalidConstraint, .needle = "MAZE_CONSTRAINT_KIND_JSON_SCHEMA" },
        // Empty values, the NULL of slices.
        .{ .c = maze.Constraint.jsonSchema(""), .err = error.InvalidConstraint, .needle = "" },
        .{ .c = maze.Constraint.lark(""), .err = error.InvalidConstraint, .needle = "empty" },
        .{ .c = maze.Constraint.gbnf(""), .err = error.InvalidConstraint, .needle = "empty" },
        .{ .c = maze.Constraint.regex(&.{}), .err = error.InvalidConstraint, .needle = "no patterns" },
        .{ .c = maze.Constraint.choice(&.{}), .err = error.InvalidConstraint, .needle = "no options" },
    };
    for (bad) |case| {
        try expectFailure(e.compile(testing.allocator, &.{case.c}, &diag), case.err, &diag, case.needle);
        var s = try e.session(null);
        defer s.deinit();
        var opts: maze.GenerateOptions = .{ .constraints = &.{case.c}, .diag = &diag };
        _ = &opts;
        try expectFailure(s.generate(testing.allocator, .{ .prompt = "x" }, opts), case.err, &diag, case.needle);
    }

    // The raw struct path refuses a NULL array with a count, and an unknown kind.
    var raw: maze.ConstraintDesc = .{ .kind = @backingInt(maze.Constraint.Kind.regex), .items = null, .n_items = 2 };
    try expectFailure(maze.compileDesc(e, &raw, &diag), error.NullArgument, &diag, "items");
    raw = .{ .kind = 99 };
    try expectFailure(maze.compileDesc(e, &raw, &diag), error.InvalidArgument, &diag, "desc.kind 99");
    raw = .{ .kind = 0, .struct_size = @sizeOf(maze.ConstraintDesc) + 8 };
    try expectFailure(maze.compileDesc(e, &raw, &diag), error.AbiMismatch, &diag, "");

    // Requests: empty prompt, invalid UTF-8, bad sampling values, context overflow.
    var s = try e.session(null);
    defer s.deinit();
    try expectFailure(s.generate(testing.allocator, .{ .prompt = "" }, .{ .diag = &diag }), error.InvalidArgument, &diag, "empty");
    try expectFailure(s.generate(testing.allocator, .{ .prompt = "bad \xff" }, .{ .diag = &diag }), error.InvalidUtf8, &diag, "");
    try expectFailure(s.generate(testing.allocator, .{ .prompt = "x" }, .{ .top_p = 0, .diag = &diag }), error.InvalidArgument, &diag, "top_p");
    try expectFailure(s.generate(testing.allocator, .{ .tokens = &.{1 << 30} }, .{ .diag = &diag }), error.InvalidArgument, &diag, "");
    try expectFailure(e.detokenize(testing.allocator, &.{1 << 30}, &diag), error.InvalidArgument, &diag, "");

    var small = try maze.Engine.init(build_options.model, .{ .context_length = 64 });
    defer small.deinit();
    var ss = try small.session(null);
    defer ss.deinit();
    const words: [40][]const u8 = @splat("many words here");
    const long_prompt = try std.mem.join(testing.allocator, " ", &words);
    defer testing.allocator.free(long_prompt);
    try expectFailure(ss.generate(testing.allocator, .{ .prompt = long_prompt }, .{ .diag = &diag }), error.ContextOverflow, &diag, "");

    // The session still works after all of that.
    var ok = try s.generate(testing.allocator, .{ .prompt = "Hello" }, greedy(3));
    defer ok.deinit();
    try testing.expectEqual(@as(u32, 3), ok.generated_tokens);
}

test "linkage follows the build option" {
    const Search = struct {
        fn visit(info: *std.posix.dl_phdr_info, _: usize, found: *bool) error{Unused}!void {
            const name = std.mem.span(info.name orelse return);
            if (std.mem.indexOf(u8, name, "libmaze.so") != null) found.* = true;
        }
    };
    var found = false;
    try std.posix.dl_iterate_phdr(&found, error{Unused}, Search.visit);
    try testing.expectEqual(build_options.dynamic, found);
}

// ------------------------------------------------------------------------------------ tools

const AddArgs = struct { a: i64, b: i64 };
const WeatherArgs = struct {
    city: []const u8,
    unit: ?enum { celsius, fahrenheit } = null,
};
const add_tool = maze.tool(AddArgs, "add", "Add two integers");
const weather_tool = maze.tool(WeatherArgs, "get_weather", "Current weather in a city");

/// SmolLM2's template has no tools: the generic format describes them in a system message.
fn toolOptions(max_tokens: u32) maze.GenerateOptions {
    var o = greedy(max_tokens);
    o.tools = &.{ add_tool, weather_tool };
    o.tool_choice = .{ .named = "add" };
    o.tool_format = .generic;
    o.parallel_tool_calls = false;
    return o;
}

test "tool formats and choices mirror the header" {
    try expectMirrorsHeader(maze.ToolFormat, "MAZE_TOOL_FORMAT_");
    try expectMirrorsHeader(maze.ToolChoice.Kind, "MAZE_TOOL_CHOICE_");
}

test "tools are declared from structs at compile time" {
    comptime std.debug.assert(std.mem.eql(u8, add_tool.parameters, maze.schemaOf(AddArgs)));
    try testing.expectEqualStrings("add", add_tool.name);
    const parsed = try std.json.parseFromSlice(std.json.Value, testing.allocator, weather_tool.parameters, .{});
    defer parsed.deinit();
    const obj = parsed.value.object;
    try testing.expectEqualStrings("object", obj.get("type").?.string);
    try testing.expect(obj.get("properties").?.object.get("city") != null);
    try testing.expectEqual(@as(usize, 1), obj.get("required").?.array.items.len);
}

test "decodeArguments is strict" {
    var diag: maze.Diagnostic = .{};
    const ok = try maze.decodeArguments(WeatherArgs, testing.allocator, .{ .id = "c1", .name = "get_weather", .arguments = "{\"city\": \"Paris\", \"unit\": \"celsius\"}" }, &diag);
    defer ok.deinit();
    try testing.expectEqualStrings("Paris", ok.value.city);
    try testing.expect(ok.value.unit.? == .celsius);
    for ([_][]const u8{ "{\"city\": \"Paris\", \"country\": \"FR\"}", "{\"city\": 3}", "{\"city\": \"Pa", "", "[]" }) |bad| {
        try expectFailure(maze.decodeArguments(WeatherArgs, testing.allocator, .{ .id = "c1", .name = "get_weather", .arguments = bad }, &diag), error.ToolArguments, &diag, "'get_weather'");
    }
}

const DeltaCollector = struct {
    first: ?maze.ToolCallDelta = null,
    id: [64]u8 = undefined,
    id_len: usize = 0,
    name: [64]u8 = undefined,
    name_len: usize = 0,
    arguments: std.ArrayList(u8) = .empty,
    starts: usize = 0,
    stop_at_start: bool = false,
    failed: bool = false,

    fn onDelta(self: *DeltaCollector, d: maze.ToolCallDelta) bool {
        if (d.name.len > 0) {
            self.starts += 1;
            self.id_len = @min(d.id.len, self.id.len);
            @memcpy(self.id[0..self.id_len], d.id[0..self.id_len]);
            self.name_len = @min(d.name.len, self.name.len);
            @memcpy(self.name[0..self.name_len], d.name[0..self.name_len]);
            if (d.arguments.len != 0) self.failed = true;
            return !self.stop_at_start;
        }
        if (d.id.len != 0 or d.index != 0) self.failed = true;
        self.arguments.appendSlice(testing.allocator, d.arguments) catch {
            self.failed = true;
            return false;
        };
        return true;
    }
};

test "tool call: required, decoded into the struct, streamed, answered by a tool message" {
    const e = try engine();
    var s = try e.session(null);
    defer s.deinit();
    const ask: maze.Message = .{ .role = "user", .content = "What is 2 plus 3?" };
    var deltas: DeltaCollector = .{};
    defer deltas.arguments.deinit(testing.allocator);
    var opts = toolOptions(60);
    opts.tools = &.{add_tool};
    opts.tool_choice = .required;
    opts.on_tool_call = .of(&deltas, DeltaCollector.onDelta);
    var r = try s.generate(testing.allocator, .{ .messages = &.{ask} }, opts);
    defer r.deinit();
    try testing.expectEqual(maze.FinishReason.tool_calls, r.finish_reason);
    try testing.expectEqual(@as(usize, 1), r.tool_calls.len);
    const call = r.tool_calls[0];
    try testing.expectEqualStrings("add", call.name);
    try testing.expect(call.satisfied and r.constraints_satisfied and call.id.len > 0);
    const args = try maze.decodeArguments(AddArgs, testing.allocator, call, null);
    defer args.deinit();
    try testing.expect(args.value.a >= 0 and args.value.b >= 0);

    // The pieces: the start with the id and name, then fragments that make the arguments.
    try testing.expect(!deltas.failed and deltas.starts == 1);
    try testing.expectEqualStrings(call.id, deltas.id[0..deltas.id_len]);
    try testing.expectEqualStrings("add", deltas.name[0..deltas.name_len]);
    try testing.expectEqualStrings(call.arguments, deltas.arguments.items);

    // The result goes back as a tool message; the model continues in text.
    var after = toolOptions(30);
    after.tool_choice = .none;
    var answer = try s.generate(testing.allocator, .{ .messages = &.{ ask, r.assistantMessage(), maze.toolMessage(call, "5") } }, after);
    defer answer.deinit();
    try testing.expectEqual(@as(usize, 0), answer.tool_calls.len);
    try testing.expect(answer.finish_reason != .tool_calls);

    // A callback returning false stops the call, which is then not satisfied.
    var stopper: DeltaCollector = .{ .stop_at_start = true };
    defer stopper.arguments.deinit(testing.allocator);
    opts.on_tool_call = .of(&stopper, DeltaCollector.onDelta);
    var cut = try s.generate(testing.allocator, .{ .messages = &.{ask} }, opts);
    defer cut.deinit();
    try testing.expectEqual(maze.FinishReason.cancelled, cut.finish_reason);
    for (cut.tool_calls) |cc| try testing.expect(!cc.satisfied);
}

test "tool errors name the problem" {
    const e = try engine();
    var s = try e.session(null);
    defer s.deinit();
    var diag: maze.Diagnostic = .{};
    const ask = [_]maze.Message{.{ .role = "user", .content = "What is 2 plus 3?" }};

    var bad_name = toolOptions(8);
    bad_name.tools = &.{.{ .name = "add two", .parameters = add_tool.parameters }};
    bad_name.tool_choice = .auto;
    bad_name.diag = &diag;
    try expectFailure(s.generate(testing.allocator, .{ .messages = &ask }, bad_name), error.InvalidArgument, &diag, "does not match");

    var duplicate = toolOptions(8);
    duplicate.tools = &.{ add_tool, add_tool };
    duplicate.diag = &diag;
    try expectFailure(s.generate(testing.allocator, .{ .messages = &ask }, duplicate), error.InvalidArgument, &diag, "already declared");

    var undeclared = toolOptions(8);
    undeclared.tool_choice = .{ .named = "search" };
    undeclared.diag = &diag;
    try expectFailure(s.generate(testing.allocator, .{ .messages = &ask }, undeclared), error.InvalidArgument, &diag, "search");

    var not_object = toolOptions(8);
    not_object.tools = &.{.{ .name = "add", .parameters = "{\"type\": \"string\"}" }};
    not_object.diag = &diag;
    try expectFailure(s.generate(testing.allocator, .{ .messages = &ask }, not_object), error.InvalidConstraint, &diag, "add");

    var template = toolOptions(8);
    template.tool_format = .template;
    template.diag = &diag;
    try expectFailure(s.generate(testing.allocator, .{ .messages = &ask }, template), error.Unsupported, &diag, "");

    var unknown_id = toolOptions(8);
    unknown_id.diag = &diag;
    const made: maze.ToolCall = .{ .id = "call_1", .name = "add", .arguments = "{\"a\":1,\"b\":2}" };
    const history = [_]maze.Message{
        ask[0],
        .{ .role = "assistant", .content = "", .tool_calls = &.{made} },
        .{ .role = "tool", .content = "3", .tool_call_id = "call_9" },
    };
    try expectFailure(s.generate(testing.allocator, .{ .messages = &history }, unknown_id), error.InvalidArgument, &diag, "call_9");
    // The same history with the right id is accepted (SmolLM2's template shows no calls).
    const rendered = try e.applyChatTemplate(testing.allocator, &.{ history[0], history[1], maze.toolMessage(made, "3") }, true, &diag);
    defer testing.allocator.free(rendered);
    try testing.expect(std.mem.indexOf(u8, rendered, "What is 2 plus 3?") != null);
}
