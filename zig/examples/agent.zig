//! A tool-calling agent from Zig: the model calls Zig functions whose tools are declared from
//! their argument structs at compile time; the loop runs each call and sends its result back
//! as a tool message, until the model answers in text.
//!
//!   zig build agent -Dmodel=Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
//!   zig build agent -Dagent-args="--generic --require"    (SmolLM2: a template without tools)
const std = @import("std");
const maze = @import("maze");

const Weather = struct {
    city: []const u8,
    unit: ?enum { celsius, fahrenheit } = null,

    fn run(args: Weather, gpa: std.mem.Allocator) ![]u8 {
        const fahrenheit = if (args.unit) |u| u == .fahrenheit else false;
        return std.json.Stringify.valueAlloc(gpa, .{
            .city = args.city,
            .temperature = if (fahrenheit) @as(f64, 64.4) else 18.0,
            .conditions = "light rain",
        }, .{});
    }
};

const Add = struct {
    a: f64,
    b: f64,

    fn run(args: Add, gpa: std.mem.Allocator) ![]u8 {
        return std.json.Stringify.valueAlloc(gpa, .{ .sum = args.a + args.b }, .{});
    }
};

/// The toolbox: each entry's tool is declared from its struct, and its calls are decoded
/// strictly into that struct before `run`.
const toolbox = .{
    .{ Weather, "get_weather", "Get the current weather in a city" },
    .{ Add, "add", "Add two numbers" },
};

const tools = blk: {
    var list: [toolbox.len]maze.Tool = undefined;
    for (toolbox, 0..) |entry, i| list[i] = maze.tool(entry[0], entry[1], entry[2]);
    const final = list;
    break :blk final;
};

/// Runs one call with the Zig function of its tool; the result is JSON text (an error object
/// when the call does not decode or names no tool).
fn runCall(gpa: std.mem.Allocator, call: maze.ToolCall) ![]u8 {
    inline for (toolbox) |entry| {
        if (std.mem.eql(u8, call.name, entry[1])) {
            var diag: maze.Diagnostic = .{};
            const args = maze.decodeArguments(entry[0], gpa, call, &diag) catch |err| switch (err) {
                error.ToolArguments => return std.json.Stringify.valueAlloc(gpa, .{ .@"error" = diag.message() }, .{}),
                else => return err,
            };
            defer args.deinit();
            return entry[0].run(args.value, gpa);
        }
    }
    return gpa.dupe(u8, "{\"error\": \"no such tool\"}");
}

const Printer = struct {
    out: *std.Io.Writer,

    fn onText(self: Printer, piece: []const u8) bool {
        self.out.writeAll(piece) catch return false;
        self.out.flush() catch return false;
        return true;
    }

    fn onToolCall(self: *const Printer, d: maze.ToolCallDelta) bool {
        if (d.name.len > 0) self.out.print("\n  call #{d} {s}: ", .{ d.index, d.name }) catch return false;
        self.out.writeAll(d.arguments) catch return false;
        self.out.flush() catch return false;
        return true;
    }
};

pub fn main(init: std.process.Init) !void {
    const gpa = init.gpa;
    var args = init.minimal.args.iterate();
    _ = args.next();
    var model_path: ?[:0]const u8 = null;
    var generic = false;
    var require = false;
    var question: []const u8 = "What is the weather like in Paris right now?";
    while (args.next()) |arg| {
        if (std.mem.eql(u8, arg, "--generic")) {
            generic = true;
        } else if (std.mem.eql(u8, arg, "--require")) {
            require = true;
        } else if (std.mem.eql(u8, arg, "-q")) {
            question = args.next() orelse return usage();
        } else if (model_path == null) {
            model_path = arg;
        } else return usage();
    }
    const path = model_path orelse return usage();

    var buf: [4096]u8 = undefined;
    var stdout = std.Io.File.stdout().writer(init.io, &buf);
    const out = &stdout.interface;
    const printer: Printer = .{ .out = out };

    var diag: maze.Diagnostic = .{};
    var engine = maze.Engine.init(path, .{ .diag = &diag }) catch |err| {
        std.debug.print("cannot load {s}: {s}: {s}\n", .{ path, @errorName(err), diag.message() });
        return err;
    };
    defer engine.deinit();
    var session = try engine.session(&diag);
    defer session.deinit();

    // The history's strings: results and messages live until the end.
    var arena_state: std.heap.ArenaAllocator = .init(gpa);
    defer arena_state.deinit();
    const arena = arena_state.allocator();
    var results: std.ArrayList(maze.Result) = .empty;
    defer {
        for (results.items) |*r| r.deinit();
        results.deinit(gpa);
    }
    var history: std.ArrayList(maze.Message) = .empty;
    defer history.deinit(gpa);
    try history.append(gpa, .{ .role = "user", .content = question });
    try out.print("user: {s}\n", .{question});

    // Small models tend to call the same tool again once they have its result: a reply whose
    // calls all repeat earlier ones is dropped and asked again with tool choice none, which
    // makes the model answer in text. The last round answers in text too.
    var done: std.StringHashMapUnmanaged(void) = .empty;
    defer done.deinit(gpa);
    const rounds = 4;
    var answer_now = false;
    for (0..rounds) |round| {
        const choice: maze.ToolChoice = if (round == 0 and require) .required else if (answer_now or round == rounds - 1) .none else .auto;
        try out.writeAll("assistant: ");
        const res = session.generateStreaming(gpa, .{ .messages = history.items }, .{
            .temperature = 0,
            .max_tokens = 200,
            .tools = &tools,
            .tool_choice = choice,
            .tool_format = if (generic) .generic else .template,
            .on_tool_call = .of(&printer, Printer.onToolCall),
        }, printer, Printer.onText) catch |err| {
            std.debug.print("\ngeneration failed: {s}: {s}\n", .{ @errorName(err), diag.message() });
            return err;
        };
        try results.append(gpa, res);
        const r = &results.items[results.items.len - 1];
        try out.print("\n  ({s}, {d} tokens)\n", .{ @tagName(r.finish_reason), r.generated_tokens });
        if (r.tool_calls.len == 0) break;

        var repeated = true;
        for (r.tool_calls) |call| {
            const key = try std.fmt.allocPrint(arena, "{s} {s}", .{ call.name, call.arguments });
            repeated = repeated and done.contains(key);
        }
        if (repeated) {
            try out.writeAll("  (every call repeats an earlier one: asking for the answer)\n");
            answer_now = true;
            continue;
        }
        // Run every call and send the results back as tool messages.
        try history.append(gpa, r.assistantMessage());
        for (r.tool_calls) |call| {
            try done.put(gpa, try std.fmt.allocPrint(arena, "{s} {s}", .{ call.name, call.arguments }), {});
            const result = try runCall(arena, call);
            try out.print("tool {s}({s}) -> {s}\n", .{ call.name, call.arguments, result });
            try history.append(gpa, maze.toolMessage(call, result));
        }
    }
    try out.flush();
}

fn usage() error{Usage} {
    std.debug.print("usage: agent [--generic] [--require] [-q QUESTION] MODEL.gguf\n", .{});
    return error.Usage;
}
