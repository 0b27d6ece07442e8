//! The Zig package of Maze: module `maze` over the C library (include/maze.h, translated with
//! addTranslateC), its tests and example.
//!
//!   zig build test                    tests on the default model (static libmaze.a)
//!   zig build test -Dlinkage=dynamic  the same against libmaze.so
//!   zig build example                 typed constrained generation (-Dmodel=PATH)
//!   zig build agent                   the tool-calling agent loop (-Dmodel, -Dagent-args)
//!
//! The Rust library is built with `cargo build --release --lib` first (cargo does nothing when
//! it is up to date); -Dcargo=false skips that and uses what target/release holds.
const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});
    const linkage = b.option(std.builtin.LinkMode, "linkage", "link libmaze statically (default) or dynamically") orelse .static;
    const run_cargo = b.option(bool, "cargo", "build the Rust library with cargo first (default true)") orelse true;
    const model = b.option([]const u8, "model", "GGUF model the tests load (default: the fetched default model)") orelse defaultModel(b);

    const lib_dir = b.path("../target/release");
    const cargo = b.addSystemCommand(&.{ "cargo", "build", "--release", "--lib" });
    cargo.setCwd(b.path(".."));
    cargo.has_side_effects = true;

    const header = b.addTranslateC(.{
        .root_source_file = b.path("../include/maze.h"),
        .target = target,
        .optimize = optimize,
    });

    const maze = b.addModule("maze", .{
        .root_source_file = b.path("src/maze.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    });
    maze.addImport("c", header.createModule());
    switch (linkage) {
        .static => {
            maze.addObjectFile(lib_dir.path(b, "libmaze.a"));
            // What `cargo rustc -- --print native-static-libs` lists (also in the Makefile).
            for ([_][]const u8{ "gcc_s", "util", "rt", "pthread", "m", "dl" }) |lib| maze.linkSystemLibrary(lib, .{});
        },
        .dynamic => {
            maze.addLibraryPath(lib_dir);
            maze.addRPath(lib_dir);
            maze.linkSystemLibrary("maze", .{});
        },
    }

    const options = b.addOptions();
    options.addOption([:0]const u8, "model", b.graph.arena.dupeSentinel(u8, model, 0) catch @panic("OOM"));
    options.addOption(bool, "dynamic", linkage == .dynamic);
    const tests = b.addTest(.{
        .root_module = b.createModule(.{
            .root_source_file = b.path("src/tests.zig"),
            .target = target,
            .optimize = optimize,
            .imports = &.{
                .{ .name = "maze", .module = maze },
                .{ .name = "build_options", .module = options.createModule() },
            },
        }),
    });
    const example = b.addExecutable(.{
        .name = "typed",
        .root_module = b.createModule(.{
            .root_source_file = b.path("examples/typed.zig"),
            .target = target,
            .optimize = optimize,
            .imports = &.{.{ .name = "maze", .module = maze }},
        }),
    });
    const agent = b.addExecutable(.{
        .name = "agent",
        .root_module = b.createModule(.{
            .root_source_file = b.path("examples/agent.zig"),
            .target = target,
            .optimize = optimize,
            .imports = &.{.{ .name = "maze", .module = maze }},
        }),
    });
    if (run_cargo) {
        tests.step.dependOn(&cargo.step);
        example.step.dependOn(&cargo.step);
        agent.step.dependOn(&cargo.step);
    }

    const run_tests = b.addRunArtifact(tests);
    // The model file is an input the build does not track: always run.
    run_tests.has_side_effects = true;
    const test_step = b.step("test", "Run the Zig tests on the default model");
    test_step.dependOn(&run_tests.step);

    b.installArtifact(example);
    const run_example = b.addRunArtifact(example);
    run_example.addArg(model);
    const example_step = b.step("example", "Run the typed-generation example on -Dmodel");
    example_step.dependOn(&run_example.step);

    // The agent example: compiled by the test step too, so it cannot rot; `zig build agent`
    // runs it on -Dmodel with -Dagent-args (e.g. "--generic --require" for SmolLM2).
    b.installArtifact(agent);
    test_step.dependOn(&agent.step);
    const run_agent = b.addRunArtifact(agent);
    const agent_args = b.option([]const u8, "agent-args", "arguments of the agent example (e.g. \"--generic --require\")") orelse "";
    var words = std.mem.tokenizeScalar(u8, agent_args, ' ');
    while (words.next()) |word| run_agent.addArg(word);
    run_agent.addArg(model);
    const agent_step = b.step("agent", "Run the tool-calling agent example on -Dmodel");
    agent_step.dependOn(&run_agent.step);
}

fn defaultModel(b: *std.Build) []const u8 {
    const env = &b.graph.environ_map;
    if (env.get("MAZE_MODEL")) |path| return path;
    if (env.get("MAZE_MODEL_DIR")) |dir| return b.fmt("{s}/SmolLM2-135M-Instruct.Q4_1.gguf", .{dir});
    const home = env.get("HOME") orelse ".";
    return b.fmt("{s}/.cache/maze/models/SmolLM2-135M-Instruct.Q4_1.gguf", .{home});
}
