package maze

/*
#include "maze.h"
*/
import "C"

import (
	"fmt"
	"runtime"
)

// ConstraintKind says what a Constraint holds (maze_constraint_kind).
type ConstraintKind uint32

// The constraint kinds of maze.h.
const (
	KindJSONSchema ConstraintKind = C.MAZE_CONSTRAINT_KIND_JSON_SCHEMA
	KindLark       ConstraintKind = C.MAZE_CONSTRAINT_KIND_LARK
	KindRegex      ConstraintKind = C.MAZE_CONSTRAINT_KIND_REGEX
	KindTokenMask  ConstraintKind = C.MAZE_CONSTRAINT_KIND_TOKEN_MASK
	KindChoice     ConstraintKind = C.MAZE_CONSTRAINT_KIND_CHOICE
	KindGBNF       ConstraintKind = C.MAZE_CONSTRAINT_KIND_GBNF
)

func (k ConstraintKind) String() string {
	switch k {
	case KindJSONSchema:
		return "json_schema"
	case KindLark:
		return "lark"
	case KindRegex:
		return "regex"
	case KindTokenMask:
		return "token_mask"
	case KindChoice:
		return "choice"
	case KindGBNF:
		return "gbnf"
	}
	return fmt.Sprintf("ConstraintKind(%d)", uint32(k))
}

// Constraint describes one rule the output must obey. Build it with JSONSchema, Lark, GBNF,
// Regex, TokenMask or Choice, then optionally Named and WithPriority. It is a plain value: it reaches
// the library field by field through the C maze_constraint_desc struct, with no JSON round
// trip, and is compiled (through the engine's cache) when a request uses it.
type Constraint struct {
	Kind ConstraintKind
	// Name is reported in validation (may be empty).
	Name string
	// Priority decides which constraint is relaxed first when constraints conflict: the lowest.
	Priority int32
	// Text is the JSON schema (KindJSONSchema), the Lark grammar (KindLark) or the GBNF grammar
	// (KindGBNF).
	Text string
	// Items are the regex patterns (KindRegex: the whole output matches every one of them) or
	// the choices (KindChoice: the output is exactly one of them).
	Items []string
	// Allowed and Forbidden are token ids (KindTokenMask): every generated token is in Allowed
	// (when non-empty) and never in Forbidden.
	Allowed, Forbidden []uint32
	// JSON says how a JSON schema (KindJSONSchema) is compiled; other kinds refuse anything but
	// the zero value.
	JSON JSONOptions
}

// JSONOptions are the JSON-schema options of maze_constraint_desc (json_flags and
// json_whitespace_pattern; see docs/CONSTRAINTS.md). The zero value keeps the defaults: compact
// JSON, keywords Maze cannot enforce refused naming their JSON pointer, unknown formats ignored
// as annotations.
type JSONOptions struct {
	// Lenient leaves out keywords Maze cannot enforce (not, if/then/else, dependencies, ...);
	// validation lists each under relaxed_keywords, with outcome "partially_enforced", and the
	// result is not ConstraintsSatisfied.
	Lenient bool
	// CoerceOneOf approximates a oneOf whose branches are not provably disjoint with anyOf
	// (reported as a relaxed keyword).
	CoerceOneOf bool
	// WhitespaceFlexible allows JSON whitespace between tokens.
	WhitespaceFlexible bool
	// StrictFormats refuses a format Maze does not enforce instead of ignoring it.
	StrictFormats bool
	// WhitespacePattern is a regex for the whitespace between tokens, replacing
	// WhitespaceFlexible; empty leaves it unset.
	WhitespacePattern string
}

func (o JSONOptions) flags() C.uint32_t {
	var bits C.uint32_t
	for _, f := range []struct {
		on  bool
		bit C.uint32_t
	}{
		{o.Lenient, C.MAZE_JSON_FLAG_LENIENT},
		{o.CoerceOneOf, C.MAZE_JSON_FLAG_COERCE_ONE_OF},
		{o.WhitespaceFlexible, C.MAZE_JSON_FLAG_WHITESPACE_FLEXIBLE},
		{o.StrictFormats, C.MAZE_JSON_FLAG_STRICT_FORMATS},
	} {
		if f.on {
			bits |= f.bit
		}
	}
	return bits
}

// JSONSchema constrains the output to a JSON value valid under schema (a JSON Schema text).
func JSONSchema(schema string) Constraint { return Constraint{Kind: KindJSONSchema, Text: schema} }

// Lark constrains the output to a Lark grammar (llguidance's dialect; the start rule is `start`).
func Lark(grammar string) Constraint { return Constraint{Kind: KindLark, Text: grammar} }

// GBNF constrains the output to a grammar in llama.cpp's GBNF syntax (the start rule is `root`).
// It is converted to Lark when compiled; what cannot be converted is refused with its line and
// column (docs/CONSTRAINTS.md).
func GBNF(grammar string) Constraint { return Constraint{Kind: KindGBNF, Text: grammar} }

// Regex constrains the whole output to match every one of the patterns (use `a|b` for
// alternatives).
func Regex(patterns ...string) Constraint { return Constraint{Kind: KindRegex, Items: patterns} }

// TokenMask allows only the allowed token ids (all when empty) and never the forbidden ones.
func TokenMask(allowed, forbidden []uint32) Constraint {
	return Constraint{Kind: KindTokenMask, Allowed: allowed, Forbidden: forbidden}
}

// Choice constrains the output to exactly one of the options.
func Choice(options ...string) Constraint { return Constraint{Kind: KindChoice, Items: options} }

// Named returns c with a name, reported in validation.
func (c Constraint) Named(name string) Constraint { c.Name = name; return c }

// WithPriority returns c with a priority (higher wins when constraints conflict).
func (c Constraint) WithPriority(priority int32) Constraint { c.Priority = priority; return c }

// WithJSONOptions returns c with options for compiling its JSON schema.
func (c Constraint) WithJSONOptions(o JSONOptions) Constraint { c.JSON = o; return c }

// desc fills a maze_constraint_desc with copies of c's data in mem.
func (m *cMemory) constraintDesc(c *Constraint) C.maze_constraint_desc {
	d := C.maze_constraint_desc_default()
	d.kind = C.uint32_t(c.Kind)
	d.priority = C.int32_t(c.Priority)
	d.name = m.str(c.Name)
	d.text = m.str(c.Text)
	d.items, d.n_items = m.strs(c.Items)
	d.allowed_tokens, d.n_allowed_tokens = m.tokens(c.Allowed)
	d.forbidden_tokens, d.n_forbidden_tokens = m.tokens(c.Forbidden)
	d.json_flags = c.JSON.flags()
	d.json_whitespace_pattern = m.str(c.JSON.WhitespacePattern)
	return d
}

// ConstraintSet is a compiled group of constraints, reusable by any number of requests at once
// (Request.Compiled). Close it when no longer needed; requests already started keep what they
// need.
type ConstraintSet struct {
	handles []*C.maze_constraint
	guard   *guard
	cleanup runtime.Cleanup
}

func newConstraintSet(handles []*C.maze_constraint) *ConstraintSet {
	set := &ConstraintSet{handles: handles, guard: newGuard()}
	set.cleanup = runtime.AddCleanup(set, freeConstraints, handles)
	return set
}

func freeConstraints(handles []*C.maze_constraint) {
	for _, h := range handles {
		C.maze_constraint_free(h)
	}
}

// Compile builds and compiles constraints. A bad schema, regex, grammar or token id fails with
// ErrInvalidConstraint and a message naming the constraint and the part.
func (e *Engine) Compile(constraints ...Constraint) (*ConstraintSet, error) {
	var handles []*C.maze_constraint
	err := e.use(func(p *C.maze_engine) error {
		var mem cMemory
		defer mem.free()
		for i := range constraints {
			desc := mem.constraintDesc(&constraints[i])
			var h *C.maze_constraint
			var cerr *C.maze_error
			if err := takeError(C.maze_constraint_new(p, &desc, &h, &cerr), cerr); err != nil {
				return err
			}
			handles = append(handles, h)
		}
		return nil
	})
	if err != nil {
		freeConstraints(handles)
		return nil, err
	}
	return newConstraintSet(handles), nil
}

// CompileJSON builds and compiles constraints from the library's JSON form: one object such as
// {"name": "answer", "json_schema": {...}}, {"regex": ["[0-9]+"]}, {"lark": "..."},
// {"token_mask": {"allowed": [...], "forbidden": [...]}}, {"choice": [...]}, {"gbnf": "..."},
// or an array of them.
func (e *Engine) CompileJSON(json string) (*ConstraintSet, error) {
	var set *ConstraintSet
	err := e.use(func(p *C.maze_engine) error {
		ptr, n := goBytes(json)
		var h *C.maze_constraint
		var cerr *C.maze_error
		if err := takeError(C.maze_constraint_from_json(p, ptr, n, &h, &cerr), cerr); err != nil {
			return err
		}
		set = newConstraintSet([]*C.maze_constraint{h})
		return nil
	})
	return set, err
}

// Len is the number of constraints in the set (a JSON array counts each element).
func (s *ConstraintSet) Len() int {
	if s.guard.enter() != nil {
		return 0
	}
	defer s.guard.leave()
	n := 0
	for _, h := range s.handles {
		n += int(C.maze_constraint_count(h))
	}
	return n
}

// Close frees the compiled constraints once calls using them have returned. Closing twice is a
// no-op.
func (s *ConstraintSet) Close() error {
	if s.guard.close() {
		s.cleanup.Stop()
		freeConstraints(s.handles)
	}
	return nil
}
