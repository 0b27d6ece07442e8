// Package maze is the Go binding of Maze, an embeddable LLM inference engine with
// grammar-constrained generation. It calls the C library (include/maze.h) through cgo.
//
//	engine, err := maze.NewEngine(maze.Options{ModelPath: "model.gguf"})
//	if err != nil { ... }
//	defer engine.Close()
//	session, err := engine.NewSession()
//	if err != nil { ... }
//	defer session.Close()
//	res, err := session.Generate(ctx, maze.Request{
//		Messages:    []maze.Message{{Role: "user", Content: "Name a colour."}},
//		Constraints: []maze.Constraint{maze.Choice("red", "green", "blue")},
//	})
//
// # Tools
//
// Request.Tools declares functions the model may call, each from the struct of its arguments
// with ToolFor[T]; Result.ToolCalls holds the calls (FinishToolCalls), DecodeArguments[T]
// decodes one strictly, and Result.AssistantMessage and ToolMessage send the results back.
//
// # Handles
//
// Engine, Session and ConstraintSet wrap C handles. Each has a Close method that frees the
// handle at once; use it (typically with defer) rather than relying on the garbage collector,
// which only frees a forgotten handle eventually. Close waits for calls running on the handle,
// and a call after Close fails with ErrClosed instead of touching freed memory. Session.Close
// cancels the session's running generation first. All three types are safe for concurrent use.
//
// # Errors
//
// Failures of the library are *Error values carrying a Status and the library's message; test
// them with errors.Is against the Err* sentinels (errors.Is(err, maze.ErrInvalidConstraint)).
//
// # Cancellation
//
// Generate and its streaming forms take a context.Context: cancelling it stops the running
// generation, prefill included, and a deadline becomes the library's timeout. The partial
// output is kept: the call returns the Result together with ctx.Err().
//
// # Linking
//
// By default the package links target/release/libmaze.a of this repository statically (build
// it first with `cargo build --release --lib`). Build tags choose otherwise: maze_dynamic links
// target/release/libmaze.so, maze_pkgconfig takes the flags from pkg-config's maze.pc.
package maze
