//! Typed constrained generation from Zig: stream a reply, then have the model fill a Zig
//! struct whose JSON schema is derived from the type at compile time.
//!
//!   zig build example -Dmodel=MODEL.gguf
const std = @import("std");
const maze = @import("maze");

/// What the model must produce: every field is enforced token by token.
const Ticket = struct {
    title: []const u8,
    severity: enum { low, medium, high, critical },
    labels: []const enum { bug, ui, crash, network, docs },
    steps: []const []const u8,
    estimate_hours: ?u8 = null,

    pub const maze_fields = .{
        .title = .{ .maxLength = 60 },
        .labels = .{ .minItems = 1, .maxItems = 3 },
        .steps = .{ .maxItems = 4, .items = .{ .maxLength = 80 } },
        .estimate_hours = .{ .minimum = 1, .maximum = 40 },
    };
};

const Printer = struct {
    out: *std.Io.Writer,

    fn onText(self: Printer, piece: []const u8) bool {
        self.out.writeAll(piece) catch return false;
        self.out.flush() catch return false;
        return true;
    }
};

pub fn main(init: std.process.Init) !void {
    const gpa = init.gpa;
    var args = init.minimal.args.iterate();
    _ = args.next();
    const model_path = args.next() orelse {
        std.debug.print("usage: typed MODEL.gguf\n", .{});
        std.process.exit(2);
    };

    var buf: [4096]u8 = undefined;
    var stdout = std.Io.File.stdout().writer(init.io, &buf);
    const out = &stdout.interface;

    var diag: maze.Diagnostic = .{};
    var engine = maze.Engine.init(model_path, .{ .diag = &diag }) catch |err| {
        std.debug.print("cannot load {s}: {s}: {s}\n", .{ model_path, @errorName(err), diag.message() });
        return err;
    };
    defer engine.deinit();
    var session = try engine.session(&diag);
    defer session.deinit();

    const report = "The app crashes when I rotate my phone on the settings screen, every time since the last update.";
    try out.writeAll("## Streaming a reply\n");
    var reply = try session.generateStreaming(gpa, .{ .messages = &.{
        .{ .role = "user", .content = "Reply in one sentence to this bug report: " ++ report },
    } }, .{ .max_tokens = 60, .temperature = 0.3 }, Printer{ .out = out }, Printer.onText);
    defer reply.deinit();
    try out.print("\n({d} tokens, {d:.0} tokens/s)\n\n## Filling a Ticket\nschema: {s}\n", .{
        reply.generated_tokens, reply.tokens_per_second, maze.schemaOf(Ticket),
    });

    var ticket = maze.generateTyped(Ticket, gpa, &session, .{ .messages = &.{
        .{ .role = "user", .content = "Turn this bug report into a ticket as JSON: " ++ report },
    } }, .{ .max_tokens = 200, .temperature = 0.3, .diag = &diag }) catch |err| {
        std.debug.print("no ticket: {s}: {s}\n", .{ @errorName(err), diag.message() });
        return err;
    };
    defer ticket.deinit();
    const t = ticket.value();
    try out.print("output:   {s}\ndecoded:  title \"{s}\", severity {s}, {d} labels, {d} steps", .{
        ticket.result.text, t.title, @tagName(t.severity), t.labels.len, t.steps.len,
    });
    if (t.estimate_hours) |h| try out.print(", estimate {d} h", .{h});
    try out.print("\nmask time {d:.1} µs per token, {d} of {d} tokens forced by the schema\n", .{
        ticket.result.mean_mask_time_us, ticket.result.forced_tokens, ticket.result.generated_tokens,
    });
    try out.flush();
}
