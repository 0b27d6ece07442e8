//! Maze for Zig: load a GGUF model, open sessions, and generate or stream text that is
//! guaranteed to match a JSON schema, grammar (Lark or GBNF), regex list, choice list or token mask.
//!
//! Handles (`Engine`, `Session`, `ConstraintSet`) wrap the C library's and are freed with
//! `deinit`. `Result`s are copied into memory of the allocator the call was given, and freed
//! with `deinit` too. Failures are Zig errors (one per status code); pass a `Diagnostic` to
//! read the library's message, which names the problem. A `Diagnostic` given to `Engine.init`
//! is kept by the engine, and one given to `engine.session` by the session (a session made
//! without one keeps the engine's): a call with no `diag` of its own reports to its session's,
//! else to its engine's. A kept `Diagnostic` must outlive what keeps it.
//!
//! Thread-safety follows the C library: an `Engine` may be used from any number of threads at
//! once; a `Session` runs one generation at a time (another gets `error.Busy`), and `cancel`
//! may be called from any thread.
const std = @import("std");
/// The C API as translated from include/maze.h, for what this module does not wrap.
pub const c = @import("c");
const Allocator = std.mem.Allocator;

pub const schema = @import("schema.zig");
pub const schemaOf = schema.schemaOf;

/// The library's status codes (maze_status).
pub const Status = enum(u32) {
    ok = c.MAZE_STATUS_OK,
    null_argument = c.MAZE_STATUS_NULL_ARGUMENT,
    invalid_argument = c.MAZE_STATUS_INVALID_ARGUMENT,
    invalid_utf8 = c.MAZE_STATUS_INVALID_UTF8,
    io = c.MAZE_STATUS_IO,
    model_format = c.MAZE_STATUS_MODEL_FORMAT,
    unsupported = c.MAZE_STATUS_UNSUPPORTED,
    tokenizer = c.MAZE_STATUS_TOKENIZER,
    template = c.MAZE_STATUS_TEMPLATE,
    context_overflow = c.MAZE_STATUS_CONTEXT_OVERFLOW,
    busy = c.MAZE_STATUS_BUSY,
    cancelled = c.MAZE_STATUS_CANCELLED,
    buffer_too_small = c.MAZE_STATUS_BUFFER_TOO_SMALL,
    backend = c.MAZE_STATUS_BACKEND,
    abi_mismatch = c.MAZE_STATUS_ABI_MISMATCH,
    internal = c.MAZE_STATUS_INTERNAL,
    panic = c.MAZE_STATUS_PANIC,
    invalid_constraint = c.MAZE_STATUS_INVALID_CONSTRAINT,
    _,

    /// The code's name in maze.h, e.g. "MAZE_STATUS_BUSY".
    pub fn name(status: Status) []const u8 {
        return std.mem.span(c.maze_status_name(@intCast(@backingInt(status))));
    }
};

/// Every failure, one error per status code, plus `OutOfMemory` (the caller's allocator),
/// `Incomplete` (`generateTyped`: the output ended before the value was complete) and
/// `ToolArguments` (`decodeArguments`: a call's arguments do not parse as the type).
pub const Error = error{
    NullArgument,
    InvalidArgument,
    InvalidUtf8,
    Io,
    ModelFormat,
    Unsupported,
    Tokenizer,
    Template,
    ContextOverflow,
    Busy,
    Cancelled,
    BufferTooSmall,
    Backend,
    AbiMismatch,
    Internal,
    Panic,
    InvalidConstraint,
    UnknownStatus,
    OutOfMemory,
    Incomplete,
    ToolArguments,
};

fn errorOf(status: Status) Error {
    std.debug.assert(status != .ok);
    const info = @typeInfo(Status).@"enum";
    inline for (info.field_names, info.field_values) |name, value| {
        if (comptime std.mem.eql(u8, name, "ok")) continue;
        if (@backingInt(status) == value) return @field(Error, errorName(name));
    }
    return error.UnknownStatus;
}

/// The error a status stands for: `context_overflow` is `ContextOverflow`.
fn errorName(comptime status: []const u8) []const u8 {
    comptime {
        var name: [status.len]u8 = undefined;
        var len: usize = 0;
        var word_start = true;
        for (status) |ch| {
            if (ch == '_') {
                word_start = true;
                continue;
            }
            name[len] = if (word_start) std.ascii.toUpper(ch) else ch;
            len += 1;
            word_start = false;
        }
        const final = name[0..len].*;
        return &final;
    }
}

/// Receives the status and message of a failed call (pass `&diag` in a call's options, or to
/// `Engine.init` / `engine.session` for every call on them without one). The message comes
/// from the call's own error object, so it is right on any thread; calls on several threads at
/// once should each pass their own, as they would overwrite a shared one.
pub const Diagnostic = struct {
    status: Status = .ok,
    buf: [1024]u8 = undefined,
    len: usize = 0,

    /// The message naming the problem (cut at 1024 bytes). For error.Incomplete, which no
    /// library status stands for, `status` stays .ok.
    pub fn message(d: *const Diagnostic) []const u8 {
        return d.buf[0..d.len];
    }

    fn set(d: *Diagnostic, status: Status, msg: []const u8) void {
        d.status = status;
        d.len = @min(msg.len, d.buf.len);
        @memcpy(d.buf[0..d.len], msg[0..d.len]);
    }
};

/// Turns a status and the error object of a call into a Zig error, filling `diag`, and frees
/// the object.
fn check(raw_status: c_uint, err: ?*c.maze_error, diag: ?*Diagnostic) Error!void {
    defer c.maze_error_free(err);
    const status: Status = @fromBackingInt(@intCast(raw_status));
    if (status == .ok) return;
    if (diag) |d| d.set(status, if (err) |e| std.mem.span(c.maze_error_message(e)) else status.name());
    return errorOf(status);
}

/// A failure found before calling the library, reported like the library's.
fn fail(diag: ?*Diagnostic, status: Status, msg: []const u8) Error {
    if (diag) |d| d.set(status, msg);
    return errorOf(status);
}

/// Library version ("MAJOR.MINOR.PATCH").
pub fn version() []const u8 {
    return std.mem.span(c.maze_version());
}

// ------------------------------------------------------------------------------------ ABI types

/// Text as passed across the ABI (maze_string).
pub const String = extern struct {
    data: ?[*]const u8 = null,
    len: usize = 0,

    pub fn from(s: []const u8) String {
        return .{ .data = s.ptr, .len = s.len };
    }
};

/// The constraint descriptor, written here by hand and checked at compile time against the
/// translated maze_constraint_desc: a change of the C struct that this does not follow fails
/// the build instead of corrupting memory.
pub const ConstraintDesc = extern struct {
    struct_size: u32 = @sizeOf(ConstraintDesc),
    kind: u32,
    priority: i32 = 0,
    reserved: u32 = 0,
    name: String = .{},
    text: String = .{},
    items: ?[*]const String = null,
    n_items: usize = 0,
    allowed_tokens: ?[*]const u32 = null,
    n_allowed_tokens: usize = 0,
    forbidden_tokens: ?[*]const u32 = null,
    n_forbidden_tokens: usize = 0,
    json_flags: u32 = 0,
    json_reserved: u32 = 0,
    json_whitespace_pattern: String = .{},
};

/// maze_chat_message (ABI 2: struct_size first, then the tool-call fields).
const ChatMessage = extern struct {
    struct_size: u32 = @sizeOf(ChatMessage),
    role: String,
    content: String,
    tool_calls: ?[*]const CToolCall = null,
    n_tool_calls: usize = 0,
    tool_call_id: String = .{},
};

/// maze_tool_call.
const CToolCall = extern struct {
    id: String,
    name: String,
    arguments: String,
};

/// maze_tool.
const CTool = extern struct {
    name: String,
    description: String,
    parameters_json: String,
};

/// maze_tool_call_delta.
const CToolCallDelta = extern struct {
    index: usize,
    id: String,
    name: String,
    arguments: String,
};

/// Where `Ours` differs from the translated C struct `Theirs` in size, alignment, field names,
/// offsets or sizes; null when the layouts match.
pub fn layoutMismatch(comptime Ours: type, comptime Theirs: type) ?[]const u8 {
    const ours = @typeInfo(Ours).@"struct";
    const theirs = @typeInfo(Theirs).@"struct";
    if (@sizeOf(Ours) != @sizeOf(Theirs) or @alignOf(Ours) != @alignOf(Theirs) or ours.field_names.len != theirs.field_names.len)
        return std.fmt.comptimePrint("{s} (size {d}, align {d}, {d} fields) does not match the C header's {s} (size {d}, align {d}, {d} fields)", .{
            @typeName(Ours), @sizeOf(Ours), @alignOf(Ours), ours.field_names.len, @typeName(Theirs), @sizeOf(Theirs), @alignOf(Theirs), theirs.field_names.len,
        });
    inline for (ours.field_names, ours.field_types, theirs.field_names, theirs.field_types) |on, ot, tn, tt| {
        if (!std.mem.eql(u8, on, tn) or @offsetOf(Ours, on) != @offsetOf(Theirs, tn) or @sizeOf(ot) != @sizeOf(tt))
            return std.fmt.comptimePrint("{s}.{s} (offset {d}, size {d}) does not match the C header's field {s} (offset {d}, size {d})", .{
                @typeName(Ours), on, @offsetOf(Ours, on), @sizeOf(ot), tn, @offsetOf(Theirs, tn), @sizeOf(tt),
            });
    }
    return null;
}

fn checkLayout(comptime Ours: type, comptime Theirs: type) void {
    if (layoutMismatch(Ours, Theirs)) |why| @compileError(why);
}

comptime {
    checkLayout(String, c.maze_string);
    checkLayout(ConstraintDesc, c.maze_constraint_desc);
    checkLayout(ChatMessage, c.maze_chat_message);
    checkLayout(CToolCall, c.maze_tool_call);
    checkLayout(CTool, c.maze_tool);
    checkLayout(CToolCallDelta, c.maze_tool_call_delta);
    if (c.MAZE_ABI_VERSION != 2) @compileError("maze.zig was written for MAZE_ABI_VERSION 2");
}

// ------------------------------------------------------------------------------------ constraints

/// One rule the output must obey, as a plain Zig value. It reaches the library through
/// `ConstraintDesc` (the C struct), field by field, with no JSON in between. The slices are
/// borrowed for the call that compiles it.
pub const Constraint = struct {
    kind: Kind,
    /// Reported in validation.
    name: []const u8 = "",
    /// When constraints conflict the lowest priority is relaxed first.
    priority: i32 = 0,
    /// The JSON schema (.json_schema), Lark grammar (.lark) or GBNF grammar (.gbnf).
    text: []const u8 = "",
    /// Regex patterns (.regex: the whole output matches every one) or choices (.choice).
    items: []const []const u8 = &.{},
    /// Token ids (.token_mask): only `allowed` (when not empty), never `forbidden`.
    allowed: []const u32 = &.{},
    forbidden: []const u32 = &.{},
    /// How a JSON schema (.json_schema) is compiled; other kinds refuse anything but the defaults.
    json: JsonOptions = .{},

    /// maze_json_flag bits and json_whitespace_pattern of maze_constraint_desc (see
    /// docs/CONSTRAINTS.md, "JSON-schema options"). The defaults: compact JSON, keywords Maze
    /// cannot enforce refused, unknown formats ignored as annotations.
    pub const JsonOptions = struct {
        /// Leave out keywords Maze cannot enforce; validation lists them and says
        /// "partially_enforced" (constraints_satisfied is false).
        lenient: bool = false,
        /// Approximate a oneOf whose branches are not provably disjoint with anyOf.
        coerce_one_of: bool = false,
        /// Allow JSON whitespace between tokens.
        whitespace_flexible: bool = false,
        /// Refuse a format Maze does not enforce instead of ignoring it.
        strict_formats: bool = false,
        /// A regex for the whitespace between tokens (replaces whitespace_flexible); empty: unset.
        whitespace_pattern: []const u8 = "",

        pub fn flags(self: JsonOptions) u32 {
            var bits: u32 = 0;
            if (self.lenient) bits |= c.MAZE_JSON_FLAG_LENIENT;
            if (self.coerce_one_of) bits |= c.MAZE_JSON_FLAG_COERCE_ONE_OF;
            if (self.whitespace_flexible) bits |= c.MAZE_JSON_FLAG_WHITESPACE_FLEXIBLE;
            if (self.strict_formats) bits |= c.MAZE_JSON_FLAG_STRICT_FORMATS;
            return bits;
        }
    };

    pub const Kind = enum(u32) {
        json_schema = c.MAZE_CONSTRAINT_KIND_JSON_SCHEMA,
        lark = c.MAZE_CONSTRAINT_KIND_LARK,
        regex = c.MAZE_CONSTRAINT_KIND_REGEX,
        token_mask = c.MAZE_CONSTRAINT_KIND_TOKEN_MASK,
        choice = c.MAZE_CONSTRAINT_KIND_CHOICE,
        gbnf = c.MAZE_CONSTRAINT_KIND_GBNF,
    };

    pub fn jsonSchema(schema_text: []const u8) Constraint {
        return .{ .kind = .json_schema, .text = schema_text };
    }
    pub fn lark(grammar: []const u8) Constraint {
        return .{ .kind = .lark, .text = grammar };
    }
    /// A grammar in llama.cpp's GBNF syntax (start rule `root`), converted to Lark when
    /// compiled; what cannot be converted is refused with its line and column.
    pub fn gbnf(grammar: []const u8) Constraint {
        return .{ .kind = .gbnf, .text = grammar };
    }
    pub fn regex(patterns: []const []const u8) Constraint {
        return .{ .kind = .regex, .items = patterns };
    }
    pub fn tokenMask(allowed: []const u32, forbidden: []const u32) Constraint {
        return .{ .kind = .token_mask, .allowed = allowed, .forbidden = forbidden };
    }
    pub fn choice(options: []const []const u8) Constraint {
        return .{ .kind = .choice, .items = options };
    }
    pub fn named(self: Constraint, constraint_name: []const u8) Constraint {
        var copy = self;
        copy.name = constraint_name;
        return copy;
    }
    pub fn withPriority(self: Constraint, priority: i32) Constraint {
        var copy = self;
        copy.priority = priority;
        return copy;
    }
    pub fn withJsonOptions(self: Constraint, options: JsonOptions) Constraint {
        var copy = self;
        copy.json = options;
        return copy;
    }

    /// The descriptor for this constraint; `items` receives the C strings of `self.items`.
    pub fn desc(self: Constraint, items: []String) ConstraintDesc {
        for (self.items, items) |item, *out| out.* = String.from(item);
        return .{
            .kind = @backingInt(self.kind),
            .priority = self.priority,
            .name = String.from(self.name),
            .text = String.from(self.text),
            .items = if (items.len > 0) items.ptr else null,
            .n_items = items.len,
            .allowed_tokens = if (self.allowed.len > 0) self.allowed.ptr else null,
            .n_allowed_tokens = self.allowed.len,
            .forbidden_tokens = if (self.forbidden.len > 0) self.forbidden.ptr else null,
            .n_forbidden_tokens = self.forbidden.len,
            .json_flags = self.json.flags(),
            .json_whitespace_pattern = String.from(self.json.whitespace_pattern),
        };
    }
};

/// Compiles one descriptor (the raw struct path, for callers that build descriptors themselves).
pub fn compileDesc(engine: *const Engine, d: *const ConstraintDesc, diag: ?*Diagnostic) Error!*c.maze_constraint {
    var handle: ?*c.maze_constraint = null;
    var err: ?*c.maze_error = null;
    try check(c.maze_constraint_new(engine.handle, @ptrCast(d), &handle, &err), err, diag orelse engine.diag);
    return handle.?;
}

/// Compiled constraints, reusable by any number of generations at once (GenerateOptions.compiled).
pub const ConstraintSet = struct {
    allocator: Allocator,
    handles: []*c.maze_constraint,

    pub fn deinit(self: *ConstraintSet) void {
        for (self.handles) |h| c.maze_constraint_free(h);
        self.allocator.free(self.handles);
        self.* = undefined;
    }

    /// Number of constraints held.
    pub fn count(self: *const ConstraintSet) usize {
        var n: usize = 0;
        for (self.handles) |h| n += c.maze_constraint_count(h);
        return n;
    }
};

// ------------------------------------------------------------------------------------ engine

/// Describes the loaded model.
pub const ModelInfo = struct {
    name: []const u8,
    architecture: []const u8,
    vocab_size: u32,
    context_length: u32,
    has_chat_template: bool,
    /// End-of-sequence token, or null when the model has none.
    eos_token: ?u32,
};

/// One chat message. Roles are those of the model's template ("system", "user", "assistant",
/// "tool"). An assistant message may carry the tool calls it made (`Result.assistantMessage`);
/// a "tool" message answers one by `tool_call_id` (`toolMessage`).
pub const Message = struct {
    role: []const u8,
    content: []const u8,
    tool_calls: []const ToolCall = &.{},
    tool_call_id: []const u8 = "",
};

/// A loaded model with its worker. Safe to use from any number of threads at once. Sessions
/// opened on it stay valid after `deinit`.
pub const Engine = struct {
    handle: *c.maze_engine,
    /// Where calls on the engine (and sessions opened without a Diagnostic) that pass none of
    /// their own report: Options.diag.
    diag: ?*Diagnostic = null,

    pub const Options = struct {
        /// Compute threads; 0 = one per core.
        threads: u32 = 0,
        /// Context (tokens) per session; 0 = the model's, capped at 8192.
        context_length: u32 = 0,
        /// Seed for requests without one; null = random.
        seed: ?u64 = null,
        /// A tokenizer.json replacing the GGUF's tokenizer.
        tokenizer_path: ?[:0]const u8 = null,
        /// Compiled constraints the cache keeps; 0 = 256.
        constraint_cache_limit: u32 = 0,
        /// Build the one-time constraint setup (token trie, parser factory: 0.1-1 s with the
        /// vocabulary) while loading instead of in the first constrained request.
        prepare_constraints: bool = false,
        /// Memory (MiB) for closed or reset sessions' keys and values, which a new session whose
        /// prompt opens the same way (16+ tokens) copies; null = 64, 0 = keep none.
        prefix_cache_mib: ?u32 = null,
        /// CUDA device number; null = the CPU. Needs a library built with the cuda feature
        /// (`make cuda`), else error.Unsupported.
        gpu_device: ?u31 = null,
        /// Loading progress; returning false aborts the load (error.Cancelled).
        progress: ?Progress = null,
        /// Receives a failure of the load, and is kept: every later call on the engine, or on
        /// a session opened without a Diagnostic, that passes none reports to it. It must
        /// outlive the engine and those sessions.
        diag: ?*Diagnostic = null,
    };

    /// A progress callback with its context.
    pub const Progress = struct {
        context: ?*anyopaque,
        callback: *const fn (progress: f32, context: ?*anyopaque) callconv(.c) bool,
    };

    /// Loads a GGUF model (Llama family). `model_path` is UTF-8.
    pub fn init(model_path: [:0]const u8, options: Options) Error!Engine {
        var params = c.maze_engine_params_default();
        params.n_threads = options.threads;
        params.n_ctx = options.context_length;
        if (options.seed) |s| params.seed = s;
        if (options.tokenizer_path) |p| params.tokenizer_path = p.ptr;
        params.constraint_cache_limit = options.constraint_cache_limit;
        params.prepare_constraints = options.prepare_constraints;
        if (options.prefix_cache_mib) |mib| params.prefix_cache_mib = mib;
        if (options.gpu_device) |device| params.gpu_device = device;
        if (options.progress) |p| {
            params.progress_callback = p.callback;
            params.progress_userdata = p.context;
        }
        var handle: ?*c.maze_engine = null;
        var err: ?*c.maze_error = null;
        try check(c.maze_engine_new(model_path.ptr, &params, &handle, &err), err, options.diag);
        return .{ .handle = handle.?, .diag = options.diag };
    }

    pub fn deinit(self: *Engine) void {
        c.maze_engine_free(self.handle);
        self.* = undefined;
    }

    /// How long the one-time constraint setup took, in microseconds: 0 until it has been built
    /// (by the first constrained request, or at load with Options.prepare_constraints).
    pub fn constraintSetupTimeUs(self: *const Engine) f64 {
        return c.maze_engine_constraint_setup_time_us(self.handle);
    }

    /// Facts about the model; the strings live as long as the engine.
    pub fn info(self: *const Engine) ModelInfo {
        const eos = c.maze_engine_eos_token(self.handle);
        return .{
            .name = std.mem.span(c.maze_engine_model_name(self.handle)),
            .architecture = std.mem.span(c.maze_engine_architecture(self.handle)),
            .vocab_size = c.maze_engine_vocab_size(self.handle),
            .context_length = c.maze_engine_context_length(self.handle),
            .has_chat_template = c.maze_engine_has_chat_template(self.handle),
            .eos_token = if (eos < 0) null else @intCast(eos),
        };
    }

    /// Whether `token` ends generation (EOS or an end-of-turn token).
    pub fn isEndOfGeneration(self: *const Engine, token: u32) bool {
        return c.maze_engine_token_is_end_of_generation(self.handle, token);
    }

    pub const TokenizeOptions = struct {
        /// Add BOS/EOS as the model wants them.
        add_special: bool = false,
        /// Let special-token text become special tokens; keep false for untrusted text.
        parse_special: bool = false,
        diag: ?*Diagnostic = null,
    };

    /// Token ids of `text`, owned by the caller.
    pub fn tokenize(self: *const Engine, allocator: Allocator, text: []const u8, options: TokenizeOptions) Error![]u32 {
        var buf = try allocator.alloc(u32, text.len + 8);
        errdefer allocator.free(buf);
        while (true) {
            var n: usize = 0;
            var err: ?*c.maze_error = null;
            const status = c.maze_tokenize(self.handle, text.ptr, text.len, options.add_special, options.parse_special, buf.ptr, buf.len, &n, &err);
            if (status == c.MAZE_STATUS_BUFFER_TOO_SMALL) {
                c.maze_error_free(err);
                buf = try allocator.realloc(buf, n);
                continue;
            }
            try check(status, err, options.diag orelse self.diag);
            return allocator.realloc(buf, n);
        }
    }

    /// The natural-log probability the model gives each token after the ones before it:
    /// `tokens.len - 1` values (the first for `tokens[1]`), owned by the caller. Start with BOS,
    /// or a context, to score a text's first token. One forward pass, between the steps of
    /// running generations; for ranking, classification and perplexity.
    pub fn score(self: *const Engine, allocator: Allocator, tokens: []const u32, diag: ?*Diagnostic) Error![]f32 {
        const out = try allocator.alloc(f32, tokens.len -| 1);
        errdefer allocator.free(out);
        var n: usize = 0;
        var err: ?*c.maze_error = null;
        const status = c.maze_score(self.handle, tokens.ptr, tokens.len, out.ptr, out.len, &n, &err);
        try check(status, err, diag orelse self.diag);
        return out;
    }

    /// The exact bytes `tokens` stand for, owned by the caller.
    pub fn detokenize(self: *const Engine, allocator: Allocator, tokens: []const u32, diag: ?*Diagnostic) Error![]u8 {
        const Call = struct {
            engine: *c.maze_engine,
            tokens: []const u32,
            fn call(ctx: @This(), buf: [*c]u8, capacity: usize, out_len: *usize, err: *?*c.maze_error) c_uint {
                return c.maze_detokenize(ctx.engine, ctx.tokens.ptr, ctx.tokens.len, buf, capacity, out_len, @ptrCast(err));
            }
        };
        return readText(allocator, tokens.len * 8 + 16, Call{ .engine = self.handle, .tokens = tokens }, diag orelse self.diag);
    }

    /// `messages` rendered with the model's chat template (error.Template when it has none).
    pub fn applyChatTemplate(self: *const Engine, allocator: Allocator, messages: []const Message, add_generation_prompt: bool, diag: ?*Diagnostic) Error![]u8 {
        var c_messages = try ChatMessages.init(allocator, messages);
        defer c_messages.deinit(allocator);
        const Call = struct {
            engine: *c.maze_engine,
            messages: []const ChatMessage,
            add: bool,
            fn call(ctx: @This(), buf: [*c]u8, capacity: usize, out_len: *usize, err: *?*c.maze_error) c_uint {
                return c.maze_chat_apply_template(ctx.engine, @ptrCast(ctx.messages.ptr), ctx.messages.len, ctx.add, buf, capacity, out_len, @ptrCast(err));
            }
        };
        var guess: usize = 256;
        for (messages) |m| {
            guess += m.role.len + m.content.len + 32;
            for (m.tool_calls) |call| guess += call.name.len + call.arguments.len + 64;
        }
        return readText(allocator, guess, Call{ .engine = self.handle, .messages = c_messages.messages, .add = add_generation_prompt }, diag orelse self.diag);
    }

    /// Compiles constraints; bad ones fail with error.InvalidConstraint and a message naming
    /// the constraint and the part.
    pub fn compile(self: *const Engine, allocator: Allocator, constraints: []const Constraint, diag: ?*Diagnostic) Error!ConstraintSet {
        const handles = try allocator.alloc(*c.maze_constraint, constraints.len);
        var done: usize = 0;
        errdefer {
            for (handles[0..done]) |h| c.maze_constraint_free(h);
            allocator.free(handles);
        }
        for (constraints) |constraint| {
            const items = try allocator.alloc(String, constraint.items.len);
            defer allocator.free(items);
            const d = constraint.desc(items);
            handles[done] = try compileDesc(self, &d, diag);
            done += 1;
        }
        return .{ .allocator = allocator, .handles = handles };
    }

    /// Compiles constraints from the library's JSON form (see maze_constraint_from_json).
    pub fn compileJson(self: *const Engine, allocator: Allocator, json: []const u8, diag: ?*Diagnostic) Error!ConstraintSet {
        var handle: ?*c.maze_constraint = null;
        var err: ?*c.maze_error = null;
        try check(c.maze_constraint_from_json(self.handle, json.ptr, json.len, &handle, &err), err, diag orelse self.diag);
        errdefer c.maze_constraint_free(handle);
        const handles = try allocator.alloc(*c.maze_constraint, 1);
        handles[0] = handle.?;
        return .{ .allocator = allocator, .handles = handles };
    }

    /// Opens a conversation with its own KV cache. `diag` (else the engine's) receives a
    /// failure to open it, and is kept: every call on the session that passes no Diagnostic
    /// reports to it. It must outlive the session.
    pub fn session(self: *const Engine, diag: ?*Diagnostic) Error!Session {
        const kept = diag orelse self.diag;
        var handle: ?*c.maze_session = null;
        var err: ?*c.maze_error = null;
        try check(c.maze_session_new(self.handle, &handle, &err), err, kept);
        return .{ .handle = handle.?, .engine = self, .diag = kept };
    }
};

/// Messages as the C structs (borrowing the strings), with one array for all their tool calls.
const ChatMessages = struct {
    messages: []ChatMessage,
    calls: []CToolCall,

    fn init(allocator: Allocator, messages: []const Message) Allocator.Error!ChatMessages {
        var n_calls: usize = 0;
        for (messages) |m| n_calls += m.tool_calls.len;
        const calls = try allocator.alloc(CToolCall, n_calls);
        errdefer allocator.free(calls);
        const out = try allocator.alloc(ChatMessage, messages.len);
        var next: usize = 0;
        for (messages, out) |m, *o| {
            const mine = calls[next .. next + m.tool_calls.len];
            next += m.tool_calls.len;
            for (m.tool_calls, mine) |call, *oc| oc.* = .{ .id = String.from(call.id), .name = String.from(call.name), .arguments = String.from(call.arguments) };
            o.* = .{
                .role = String.from(m.role),
                .content = String.from(m.content),
                .tool_calls = if (mine.len > 0) mine.ptr else null,
                .n_tool_calls = mine.len,
                .tool_call_id = String.from(m.tool_call_id),
            };
        }
        return .{ .messages = out, .calls = calls };
    }

    fn deinit(self: *ChatMessages, allocator: Allocator) void {
        allocator.free(self.messages);
        allocator.free(self.calls);
    }
};

/// Runs a call with the library's buffer protocol (the needed size comes back with
/// MAZE_STATUS_BUFFER_TOO_SMALL), growing the buffer until the text fits.
fn readText(allocator: Allocator, guess: usize, call: anytype, diag: ?*Diagnostic) Error![]u8 {
    var buf = try allocator.alloc(u8, guess + 1);
    errdefer allocator.free(buf);
    while (true) {
        var n: usize = 0;
        var err: ?*c.maze_error = null;
        const status = call.call(buf.ptr, buf.len, &n, &err);
        if (status == c.MAZE_STATUS_BUFFER_TOO_SMALL) {
            c.maze_error_free(err);
            buf = try allocator.realloc(buf, n + 1);
            continue;
        }
        try check(status, err, diag);
        return allocator.realloc(buf, n);
    }
}

// ------------------------------------------------------------------------------------ sessions

/// What to continue the session from.
pub const Input = union(enum) {
    /// Text; the longest prefix the session already computed is reused.
    prompt: []const u8,
    /// Chat messages rendered with the model's template, ending in an assistant turn.
    messages: []const Message,
    /// Token ids used as they are.
    tokens: []const u32,
};

/// Settings of one generation. Null fields keep the library's defaults (llama.cpp's sampling
/// defaults, 256 tokens, random seed).
pub const GenerateOptions = struct {
    max_tokens: ?u32 = null,
    /// 0 = greedy.
    temperature: ?f32 = null,
    top_k: ?u32 = null,
    top_p: ?f32 = null,
    min_p: ?f32 = null,
    repetition_penalty: ?f32 = null,
    penalty_last_n: ?u32 = null,
    frequency_penalty: ?f32 = null,
    presence_penalty: ?f32 = null,
    seed: ?u64 = null,
    /// The text ends before the first of these that appears.
    stop: []const []const u8 = &.{},
    /// Wall-clock limit; 0 = none. Passing it finishes with .timeout.
    timeout_ms: u32 = 0,
    /// Record each token's log-probability (Result.logprobs).
    logprobs: bool = false,
    /// Keep generating past the model's end-of-generation tokens until max_tokens (fixed-length
    /// output, benchmarks); the end tokens stay in the output. A constrained request still stops
    /// where its grammar ends.
    ignore_eos: bool = false,
    /// Constraints as values, compiled for this call through the engine's cache.
    constraints: []const Constraint = &.{},
    /// Sets compiled beforehand with Engine.compile.
    compiled: []const *const ConstraintSet = &.{},
    /// Tools the model may call (`.messages` input only; declare them with `maze.tool`). The
    /// reply's calls are enforced (declared names, arguments valid under each tool's schema)
    /// and returned in Result.tool_calls. Bad declarations fail with error.InvalidArgument, a
    /// schema that does not compile with error.InvalidConstraint, each naming the tool.
    tools: []const Tool = &.{},
    /// With .auto, `constraints` govern a text reply.
    tool_choice: ToolChoice = .auto,
    /// More than one call in a reply.
    parallel_tool_calls: bool = true,
    /// Most calls in one reply when parallel; 0 = 8.
    max_tool_calls: u32 = 0,
    /// .template (the chat template's own syntax) fails with error.Unsupported when the
    /// template cannot render tools: use .generic for such a model.
    tool_format: ToolFormat = .template,
    /// Receives each call's name and then its argument fragments as the reply streams, on the
    /// calling thread (text still goes to the text callback); returning false stops generation.
    on_tool_call: ?ToolCallSink = null,
    diag: ?*Diagnostic = null,
};

/// Why generation ended.
pub const FinishReason = enum(u32) {
    stop = c.MAZE_FINISH_REASON_STOP,
    length = c.MAZE_FINISH_REASON_LENGTH,
    stop_sequence = c.MAZE_FINISH_REASON_STOP_SEQUENCE,
    cancelled = c.MAZE_FINISH_REASON_CANCELLED,
    timeout = c.MAZE_FINISH_REASON_TIMEOUT,
    @"error" = c.MAZE_FINISH_REASON_ERROR,
    /// The reply ended with its tool calls (Result.tool_calls).
    tool_calls = c.MAZE_FINISH_REASON_TOOL_CALLS,
    _,
};

/// A finished generation, in memory of the allocator given to the call.
pub const Result = struct {
    allocator: Allocator,
    text: []u8,
    tokens: []u32,
    /// One per token when GenerateOptions.logprobs was set.
    logprobs: ?[]f32,
    finish_reason: FinishReason,
    /// Set when generation failed midway (finish_reason .error).
    failure: ?struct { status: Status, message: []u8 },
    prompt_tokens: u32,
    cached_tokens: u32,
    generated_tokens: u32,
    time_to_first_token_ms: f64,
    total_time_ms: f64,
    tokens_per_second: f64,
    prefill_tokens_per_second: f64,
    /// Every constraint was enforced on every token and the output is complete under it.
    constraints_satisfied: bool,
    /// How each constraint fared (see maze_result_validation_json).
    validation_json: []u8,
    /// Model, constraints, sampling parameters and the seed used.
    provenance_json: []u8,
    constraint_compile_time_us: f64,
    /// Of constraint_compile_time_us, the engine's one-time constraint setup (only its first
    /// constrained request pays it, unless Options.prepare_constraints built it at load).
    constraint_setup_time_us: f64,
    mean_mask_time_us: f64,
    forced_tokens: u32,
    /// The calls the reply made (requests with tools); with calls, finish_reason is
    /// .tool_calls when the model ended them, or the reason they were cut short.
    tool_calls: []ToolCall,

    pub fn deinit(self: *Result) void {
        const a = self.allocator;
        for (self.tool_calls) |call| call.free(a);
        a.free(self.tool_calls);
        a.free(self.text);
        a.free(self.tokens);
        if (self.logprobs) |l| a.free(l);
        if (self.failure) |f| a.free(f.message);
        a.free(self.validation_json);
        a.free(self.provenance_json);
        self.* = undefined;
    }

    /// Copies a C result and frees it.
    fn take(allocator: Allocator, r: *c.maze_result) Allocator.Error!Result {
        defer c.maze_result_free(r);
        var n: usize = 0;
        const text_ptr = c.maze_result_text(r, &n);
        const text = try allocator.dupe(u8, text_ptr[0..n]);
        errdefer allocator.free(text);
        const tokens_ptr = c.maze_result_tokens(r, &n);
        const tokens = try allocator.dupe(u32, if (tokens_ptr) |p| p[0..n] else &.{});
        errdefer allocator.free(tokens);
        const logprobs_ptr = c.maze_result_logprobs(r, &n);
        const logprobs: ?[]f32 = if (logprobs_ptr) |p| try allocator.dupe(f32, p[0..n]) else null;
        errdefer if (logprobs) |l| allocator.free(l);
        const validation = try allocator.dupe(u8, std.mem.span(c.maze_result_validation_json(r)));
        errdefer allocator.free(validation);
        const provenance = try allocator.dupe(u8, std.mem.span(c.maze_result_provenance_json(r)));
        errdefer allocator.free(provenance);
        const calls = try takeToolCalls(allocator, r);
        errdefer {
            for (calls) |call| call.free(allocator);
            allocator.free(calls);
        }
        const finish: FinishReason = @fromBackingInt(@intCast(c.maze_result_finish_reason(r)));
        const failure_message = c.maze_result_error_message(r);
        return .{
            .allocator = allocator,
            .text = text,
            .tokens = tokens,
            .logprobs = logprobs,
            .finish_reason = finish,
            .failure = if (failure_message) |m| .{
                .status = @fromBackingInt(@intCast(c.maze_result_error_status(r))),
                .message = try allocator.dupe(u8, std.mem.span(m)),
            } else null,
            .prompt_tokens = c.maze_result_prompt_tokens(r),
            .cached_tokens = c.maze_result_cached_tokens(r),
            .generated_tokens = c.maze_result_generated_tokens(r),
            .time_to_first_token_ms = c.maze_result_time_to_first_token_ms(r),
            .total_time_ms = c.maze_result_total_time_ms(r),
            .tokens_per_second = c.maze_result_tokens_per_second(r),
            .prefill_tokens_per_second = c.maze_result_prefill_tokens_per_second(r),
            .constraints_satisfied = c.maze_result_constraints_satisfied(r),
            .validation_json = validation,
            .provenance_json = provenance,
            .constraint_compile_time_us = c.maze_result_constraint_compile_time_us(r),
            .constraint_setup_time_us = c.maze_result_constraint_setup_time_us(r),
            .mean_mask_time_us = c.maze_result_mean_mask_time_us(r),
            .forced_tokens = c.maze_result_forced_tokens(r),
            .tool_calls = calls,
        };
    }

    /// The assistant turn this result adds to a chat history: its text and its tool calls
    /// (borrowed from the result).
    pub fn assistantMessage(self: *const Result) Message {
        return .{ .role = "assistant", .content = self.text, .tool_calls = self.tool_calls };
    }
};

fn takeToolCalls(allocator: Allocator, r: *c.maze_result) Allocator.Error![]ToolCall {
    const n = c.maze_result_tool_call_count(r);
    const calls = try allocator.alloc(ToolCall, n);
    var done: usize = 0;
    errdefer {
        for (calls[0..done]) |call| call.free(allocator);
        allocator.free(calls);
    }
    while (done < n) : (done += 1) {
        var raw: CToolCall = undefined;
        if (c.maze_result_tool_call(r, done, @ptrCast(&raw), null) != c.MAZE_STATUS_OK) break;
        const id = try allocator.dupe(u8, slice(raw.id));
        errdefer allocator.free(id);
        const name = try allocator.dupe(u8, slice(raw.name));
        errdefer allocator.free(name);
        calls[done] = .{
            .id = id,
            .name = name,
            .arguments = try allocator.dupe(u8, slice(raw.arguments)),
            .satisfied = c.maze_result_tool_call_satisfied(r, done),
        };
    }
    return allocator.realloc(calls, done);
}

fn slice(s: String) []const u8 {
    return if (s.data) |p| p[0..s.len] else "";
}

/// One conversation with its own KV cache.
pub const Session = struct {
    handle: *c.maze_session,
    /// Compiles GenerateOptions.constraints; must outlive calls that pass constraints as values.
    engine: *const Engine,
    /// Where calls that pass no Diagnostic report (the one the session was opened with, else
    /// the engine's).
    diag: ?*Diagnostic = null,

    /// Frees the session and its KV cache; no call on it may be running.
    pub fn deinit(self: *Session) void {
        c.maze_session_free(self.handle);
        self.* = undefined;
    }

    /// Stops the running generation (prefill included) from any thread; it then finishes with
    /// .cancelled. A no-op when idle.
    pub fn cancel(self: *const Session) void {
        _ = c.maze_session_cancel(self.handle);
    }

    /// Forgets the conversation (error.Busy while generating).
    pub fn reset(self: *const Session, diag: ?*Diagnostic) Error!void {
        var err: ?*c.maze_error = null;
        try check(c.maze_session_reset(self.handle, &err), err, diag orelse self.diag);
    }

    /// Generates to the end. The Result is owned by the caller (allocated with `allocator`),
    /// also when generation was cancelled, timed out or failed midway (see finish_reason).
    pub fn generate(self: *const Session, allocator: Allocator, input: Input, options: GenerateOptions) Error!Result {
        return self.run(allocator, input, options, null, null);
    }

    /// Like `generate`, calling `onText(context, piece)` with each piece of text as it is
    /// produced (whole UTF-8 characters, never part of a stop sequence), on this thread.
    /// Returning false stops generation: the Result then holds exactly the text delivered.
    pub fn generateStreaming(
        self: *const Session,
        allocator: Allocator,
        input: Input,
        options: GenerateOptions,
        context: anytype,
        comptime onText: fn (@TypeOf(context), []const u8) bool,
    ) Error!Result {
        const Context = @TypeOf(context);
        const Trampoline = struct {
            fn call(text: [*c]const u8, len: usize, userdata: ?*anyopaque) callconv(.c) bool {
                const ctx: *const Context = @ptrCast(@alignCast(userdata.?));
                return onText(ctx.*, text[0..len]);
            }
        };
        return self.run(allocator, input, options, Trampoline.call, @ptrCast(@constCast(&context)));
    }

    fn run(self: *const Session, allocator: Allocator, input: Input, options: GenerateOptions, callback: c.maze_stream_callback, userdata: ?*anyopaque) Error!Result {
        const diag = options.diag orelse self.diag;
        var params = c.maze_generate_params_default();
        if (options.max_tokens) |v| params.max_tokens = v;
        if (options.temperature) |v| params.temperature = v;
        if (options.top_k) |v| params.top_k = v;
        if (options.top_p) |v| params.top_p = v;
        if (options.min_p) |v| params.min_p = v;
        if (options.repetition_penalty) |v| params.repetition_penalty = v;
        if (options.penalty_last_n) |v| params.penalty_last_n = v;
        if (options.frequency_penalty) |v| params.frequency_penalty = v;
        if (options.presence_penalty) |v| params.presence_penalty = v;
        if (options.seed) |v| params.seed = v;
        params.timeout_ms = options.timeout_ms;
        params.logprobs = options.logprobs;
        params.ignore_eos = options.ignore_eos;

        const stop = try allocator.alloc(String, options.stop.len);
        defer allocator.free(stop);
        for (options.stop, stop) |s, *o| o.* = String.from(s);
        params.stop = @ptrCast(stop.ptr);
        params.n_stop = stop.len;

        var own: ?ConstraintSet = null;
        defer if (own) |*set| set.deinit();
        if (options.constraints.len > 0) own = try self.engine.compile(allocator, options.constraints, diag);
        var handles: std.ArrayList(*c.maze_constraint) = .empty;
        defer handles.deinit(allocator);
        if (own) |set| try handles.appendSlice(allocator, set.handles);
        for (options.compiled) |set| try handles.appendSlice(allocator, set.handles);
        params.constraints = @ptrCast(handles.items.ptr);
        params.n_constraints = handles.items.len;

        const tools = try allocator.alloc(CTool, options.tools.len);
        defer allocator.free(tools);
        for (options.tools, tools) |t, *o| o.* = .{ .name = String.from(t.name), .description = String.from(t.description), .parameters_json = String.from(t.parameters) };
        params.tools = @ptrCast(tools.ptr);
        params.n_tools = tools.len;
        params.tool_choice = @backingInt(std.meta.activeTag(options.tool_choice));
        const choice_name: []const u8 = switch (options.tool_choice) {
            .named => |n| n,
            else => "",
        };
        params.tool_choice_name = .{ .data = choice_name.ptr, .len = choice_name.len };
        params.parallel_tool_calls = options.parallel_tool_calls;
        params.max_tool_calls = options.max_tool_calls;
        params.tool_format = @backingInt(options.tool_format);
        if (options.on_tool_call) |*sink| {
            params.tool_callback = ToolCallSink.trampoline;
            params.tool_userdata = @ptrCast(@constCast(sink));
        }

        var result: ?*c.maze_result = null;
        var err: ?*c.maze_error = null;
        const status = switch (input) {
            .prompt => |p| c.maze_session_generate(self.handle, p.ptr, p.len, &params, callback, userdata, &result, &err),
            .tokens => |t| c.maze_session_generate_tokens(self.handle, t.ptr, t.len, &params, callback, userdata, &result, &err),
            .messages => |m| blk: {
                var messages = try ChatMessages.init(allocator, m);
                defer messages.deinit(allocator);
                break :blk c.maze_session_chat(self.handle, @ptrCast(messages.messages.ptr), messages.messages.len, &params, callback, userdata, &result, &err);
            },
        };
        try check(status, err, diag);
        return Result.take(allocator, result.?);
    }
};

// ------------------------------------------------------------------------------------ typed output

/// A value generated by `generateTyped`, with the Result it came from.
pub fn Typed(comptime T: type) type {
    return struct {
        parsed: std.json.Parsed(T),
        result: Result,

        pub fn value(self: *const @This()) T {
            return self.parsed.value;
        }

        pub fn deinit(self: *@This()) void {
            self.parsed.deinit();
            self.result.deinit();
        }
    };
}

/// Generates a `T`: the output is constrained by `schemaOf(T)` (compact JSON) and parsed with
/// std.json. Fails with error.Incomplete when generation ended before the value was complete,
/// e.g. at the token limit; the reason goes to options.diag, else to the session's Diagnostic
/// (else the engine's), as every failure of the call does.
pub fn generateTyped(comptime T: type, allocator: Allocator, session: *const Session, input: Input, options: GenerateOptions) Error!Typed(T) {
    const diag = options.diag orelse session.diag;
    const compact = comptime schema.compact(schemaOf(T));
    var all: std.ArrayList(Constraint) = .empty;
    defer all.deinit(allocator);
    try all.appendSlice(allocator, options.constraints);
    try all.append(allocator, Constraint.jsonSchema(compact).named(@typeName(T)));
    var opts = options;
    opts.constraints = all.items;
    var result = try session.generate(allocator, input, opts);
    errdefer result.deinit();
    if (result.finish_reason != .stop or !result.constraints_satisfied) {
        var buf: [160]u8 = undefined;
        const msg = std.fmt.bufPrint(&buf, "generation ended ({s}) after {d} tokens before the {s} value was complete", .{
            @tagName(result.finish_reason), result.generated_tokens, @typeName(T),
        }) catch &buf;
        if (diag) |d| d.set(.ok, msg);
        return error.Incomplete;
    }
    const parsed = std.json.parseFromSlice(T, allocator, result.text, .{}) catch |e| {
        var buf: [200]u8 = undefined;
        const msg = std.fmt.bufPrint(&buf, "the generated JSON does not parse as {s}: {s}", .{ @typeName(T), @errorName(e) }) catch &buf;
        return fail(diag, .internal, msg);
    };
    return .{ .parsed = parsed, .result = result };
}

// ------------------------------------------------------------------------------------ tools

/// A tool the model may call: a name (^[A-Za-z0-9_-]{1,64}$, unique in a request), what it
/// does, and the JSON schema of its arguments object ("" = any object). `maze.tool` declares
/// one from the struct of its arguments.
pub const Tool = struct {
    name: []const u8,
    description: []const u8 = "",
    parameters: []const u8 = "",
};

/// Declares a tool whose arguments are an `Args` (a struct): its parameters are
/// `schemaOf(Args)`, computed at compile time, so every call decodes into an `Args` with
/// `decodeArguments`.
pub fn tool(comptime Args: type, comptime name: []const u8, comptime description: []const u8) Tool {
    if (@typeInfo(Args) != .@"struct") @compileError("maze.tool: the arguments of a tool are a JSON object; " ++ @typeName(Args) ++ " is not a struct");
    return comptime .{ .name = name, .description = description, .parameters = schemaOf(Args) };
}

/// Whether and which tools the model must call.
pub const ToolChoice = union(ToolChoice.Kind) {
    /// Text or calls, as the model decides.
    auto,
    /// The tools are shown, but the model answers in text.
    none,
    /// The reply is one or more calls and nothing else.
    required,
    /// The reply is exactly one call of this (declared) tool.
    named: []const u8,

    /// maze_tool_choice.
    pub const Kind = enum(u32) {
        auto = c.MAZE_TOOL_CHOICE_AUTO,
        none = c.MAZE_TOOL_CHOICE_NONE,
        required = c.MAZE_TOOL_CHOICE_REQUIRED,
        named = c.MAZE_TOOL_CHOICE_NAMED,
    };
};

/// How tool calls are written (maze_tool_format).
pub const ToolFormat = enum(u32) {
    /// The chat template's own format.
    template = c.MAZE_TOOL_FORMAT_TEMPLATE,
    /// Qwen2.5, Qwen3, Hermes: `<tool_call>{"name": ..., "arguments": ...}</tool_call>`.
    hermes = c.MAZE_TOOL_FORMAT_HERMES,
    /// Llama 3.1-3.3: one JSON object `{"name": ..., "parameters": ...}`.
    llama3 = c.MAZE_TOOL_FORMAT_LLAMA3,
    /// Mistral: `[TOOL_CALLS][{"name": ..., "arguments": ...}]`.
    mistral = c.MAZE_TOOL_FORMAT_MISTRAL,
    /// Any template: the tools described in a system message, calls written as Hermes writes
    /// them (docs/TOOLS.md).
    generic = c.MAZE_TOOL_FORMAT_GENERIC,
};

/// A tool call: one the model made (Result.tool_calls, owned by the result), or one an
/// assistant message of the history made (Message.tool_calls, borrowed).
pub const ToolCall = struct {
    id: []const u8,
    name: []const u8,
    /// A JSON object as text; for a call cut short, the part generated.
    arguments: []const u8,
    /// Complete and generated under the tool grammar throughout, so `arguments` validates
    /// against the tool's schema (results only).
    satisfied: bool = false,

    fn free(self: ToolCall, allocator: Allocator) void {
        allocator.free(self.id);
        allocator.free(self.name);
        allocator.free(self.arguments);
    }
};

/// A piece of a streamed call: the first piece of a call has its id and name (and empty
/// arguments); each later one a fragment of its arguments JSON, in order. Valid only during
/// the callback.
pub const ToolCallDelta = struct {
    /// The call's place in the reply, from 0.
    index: usize,
    id: []const u8,
    name: []const u8,
    arguments: []const u8,
};

/// Where GenerateOptions.on_tool_call sends the pieces of streamed calls:
/// `ToolCallSink.of(&state, State.onDelta)` with `fn onDelta(*State, ToolCallDelta) bool`.
pub const ToolCallSink = struct {
    context: ?*anyopaque,
    call: *const fn (context: ?*anyopaque, delta: ToolCallDelta) bool,

    pub fn of(context: anytype, comptime onDelta: fn (@TypeOf(context), ToolCallDelta) bool) ToolCallSink {
        const Context = @TypeOf(context);
        if (@typeInfo(Context) != .pointer) @compileError("ToolCallSink.of: the context is a pointer, got " ++ @typeName(Context));
        const Wrap = struct {
            fn call(ctx: ?*anyopaque, delta: ToolCallDelta) bool {
                return onDelta(@ptrCast(@alignCast(ctx.?)), delta);
            }
        };
        return .{ .context = @ptrCast(@constCast(context)), .call = Wrap.call };
    }

    fn trampoline(delta: [*c]const c.maze_tool_call_delta, userdata: ?*anyopaque) callconv(.c) bool {
        const sink: *const ToolCallSink = @ptrCast(@alignCast(userdata.?));
        const d: *const CToolCallDelta = @ptrCast(delta);
        return sink.call(sink.context, .{ .index = d.index, .id = slice(d.id), .name = slice(d.name), .arguments = slice(d.arguments) });
    }
};

/// The "tool" message that answers `call` with `content` (the tool's result, often JSON).
pub fn toolMessage(call: ToolCall, content: []const u8) Message {
    return .{ .role = "tool", .content = content, .tool_call_id = call.id };
}

/// Parses a call's arguments into a `T` with std.json, strictly: an unknown field or a value
/// of the wrong type fails with error.ToolArguments, and `diag` (when given) says why.
pub fn decodeArguments(comptime T: type, allocator: Allocator, call: ToolCall, diag: ?*Diagnostic) Error!std.json.Parsed(T) {
    return std.json.parseFromSlice(T, allocator, call.arguments, .{ .ignore_unknown_fields = false }) catch |e| {
        if (e == error.OutOfMemory) return error.OutOfMemory;
        if (diag) |d| {
            var buf: [240]u8 = undefined;
            const msg = std.fmt.bufPrint(&buf, "the arguments of call {s} of '{s}' do not parse as {s}: {s}{s}", .{
                call.id, call.name, @typeName(T), @errorName(e), if (call.satisfied) "" else " (the call is not satisfied: it may be cut short)",
            }) catch &buf;
            d.set(.ok, msg);
        }
        return error.ToolArguments;
    };
}
