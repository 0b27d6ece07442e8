package maze

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// generate runs one greedy constrained request on a fresh session.
func generate(t *testing.T, maxTokens int, msg string, cs ...Constraint) *Result {
	t.Helper()
	res, err := newSession(t, sharedEngine(t)).Generate(t.Context(), Request{
		Messages:    []Message{{Role: "user", Content: msg}},
		Params:      greedy(maxTokens),
		Constraints: cs,
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestConstraintKinds(t *testing.T) {
	t.Run("json_schema", func(t *testing.T) {
		schema := `{"type":"object","properties":{"name":{"type":"string","maxLength":20},"age":{"type":"integer","minimum":0,"maximum":150}},"required":["name","age"],"additionalProperties":false}`
		res := generate(t, 80, "Describe a person as JSON.", JSONSchema(schema).Named("person"))
		var v struct {
			Name *string `json:"name"`
			Age  *int    `json:"age"`
		}
		dec := json.NewDecoder(strings.NewReader(res.Text))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&v); err != nil || v.Name == nil || v.Age == nil || *v.Age < 0 || *v.Age > 150 || len(*v.Name) > 20 {
			t.Errorf("output %q: %v", res.Text, err)
		}
		checkSatisfied(t, res, "person", "json_schema")
	})
	t.Run("lark", func(t *testing.T) {
		grammar := `start: "The answer is " NUMBER "."
NUMBER: /[0-9]{1,3}/`
		res := generate(t, 20, "What is 6 times 7?", Lark(grammar).Named("sentence"))
		if !regexp.MustCompile(`^The answer is [0-9]{1,3}\.$`).MatchString(res.Text) {
			t.Errorf("output %q", res.Text)
		}
		checkSatisfied(t, res, "sentence", "lark")
	})
	t.Run("gbnf", func(t *testing.T) {
		grammar := "root ::= \"The answer is \" number \".\"\nnumber ::= [0-9]{1,3} # digits\n"
		res := generate(t, 20, "What is 6 times 7?", GBNF(grammar).Named("sentence"))
		if !regexp.MustCompile(`^The answer is [0-9]{1,3}\.$`).MatchString(res.Text) {
			t.Errorf("output %q", res.Text)
		}
		checkSatisfied(t, res, "sentence", "gbnf")
	})
	t.Run("regex", func(t *testing.T) {
		// Every pattern must match: a date, and one in the 2000s.
		res := generate(t, 20, "Give a date.", Regex(`[0-9]{4}-[0-9]{2}-[0-9]{2}`, `2[0-9]{3}-.*`).Named("date"))
		if !regexp.MustCompile(`^2[0-9]{3}-[0-9]{2}-[0-9]{2}$`).MatchString(res.Text) {
			t.Errorf("output %q", res.Text)
		}
		checkSatisfied(t, res, "date", "regex")
	})
	t.Run("choice", func(t *testing.T) {
		res := generate(t, 10, "Is the sky blue? Answer yes or no.", Choice("yes", "no", "maybe").Named("answer"))
		if !slices.Contains([]string{"yes", "no", "maybe"}, res.Text) {
			t.Errorf("output %q", res.Text)
		}
		checkSatisfied(t, res, "answer", "choice")
	})
	t.Run("token_mask", func(t *testing.T) {
		e := sharedEngine(t)
		var digits []uint32
		for d := range 10 {
			ids, err := e.Tokenize(string(rune('0'+d)), false, false)
			if err != nil || len(ids) != 1 {
				t.Fatalf("digit %d: %v %v", d, ids, err)
			}
			digits = append(digits, ids[0])
		}
		allowed := append(slices.Clone(digits), uint32(e.Info().EOSToken))
		res := generate(t, 8, "Write a word.", TokenMask(allowed, nil).Named("digits"))
		if res.GeneratedTokens == 0 || strings.Trim(res.Text, "0123456789") != "" {
			t.Errorf("allowed digits only, got %q", res.Text)
		}
		for _, id := range res.Tokens {
			if !slices.Contains(allowed, id) {
				t.Errorf("token %d outside the allowed set", id)
			}
		}
		// Forbidding: the greedy answer's first token is never produced again.
		free := generate(t, 4, "Say hello.")
		res = generate(t, 4, "Say hello.", TokenMask(nil, free.Tokens[:1]).Named("no-first"))
		if slices.Contains(res.Tokens, free.Tokens[0]) {
			t.Errorf("forbidden token %d in %v", free.Tokens[0], res.Tokens)
		}
	})
}

func checkSatisfied(t *testing.T, res *Result, name, kind string) {
	t.Helper()
	if !res.ConstraintsSatisfied || !res.Validation.Satisfied || len(res.Validation.Constraints) != 1 {
		t.Fatalf("not satisfied: %s (output %q)", res.ValidationJSON, res.Text)
	}
	c := res.Validation.Constraints[0]
	if c.Name != name || c.Kind != kind || c.Outcome != "satisfied" {
		t.Errorf("validation %+v, want %s/%s satisfied", c, name, kind)
	}
	if res.Validation.Stats == nil || res.Validation.Stats.MasksComputed == 0 {
		t.Errorf("no constraint stats: %s", res.ValidationJSON)
	}
}

func TestConstraintPriority(t *testing.T) {
	// The two cannot both hold: the lower priority is relaxed and reported.
	res := generate(t, 8, "Pick a number.",
		Regex(`[0-9]{1,4}`).Named("number").WithPriority(1),
		Choice("yes", "no").Named("yesno").WithPriority(-1))
	if strings.Trim(res.Text, "0123456789") != "" || res.Text == "" {
		t.Errorf("the higher priority must win: %q", res.Text)
	}
	if res.ConstraintsSatisfied {
		t.Errorf("a relaxed constraint must not count as satisfied: %s", res.ValidationJSON)
	}
	outcomes := map[string]string{}
	for _, c := range res.Validation.Constraints {
		outcomes[c.Name] = c.Outcome
		if c.Name == "yesno" && c.Priority != -1 {
			t.Errorf("priority %d", c.Priority)
		}
	}
	if outcomes["yesno"] != "relaxed" || outcomes["number"] != "satisfied" {
		t.Errorf("outcomes %v", outcomes)
	}
}

func TestCompiledSetsAndCache(t *testing.T) {
	e := sharedEngine(t)
	if err := e.ClearConstraintCache(); err != nil {
		t.Fatal(err)
	}
	before, err := e.ConstraintCacheStats()
	if err != nil {
		t.Fatal(err)
	}
	set, err := e.CompileJSON(`[{"name": "color", "choice": ["red", "green", "blue"]}, {"regex": ["[a-z]+"]}]`)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if set.Len() != 2 {
		t.Errorf("Len %d", set.Len())
	}
	again, err := e.Compile(Choice("red", "green", "blue").Named("color"), Regex("[a-z]+"))
	if err != nil {
		t.Fatal(err)
	}
	again.Close()
	after, _ := e.ConstraintCacheStats()
	if after.Hits < before.Hits+2 || after.Size < 2 {
		t.Errorf("the struct path must hit what the JSON path compiled: before %+v, after %+v", before, after)
	}
	for range 2 {
		res, err := newSession(t, e).Generate(t.Context(), Request{Prompt: "My favourite colour is", Params: greedy(5), Compiled: []*ConstraintSet{set}})
		if err != nil || !slices.Contains([]string{"red", "green", "blue"}, res.Text) || !res.ConstraintsSatisfied {
			t.Errorf("compiled set: %+v, %v", res, err)
		}
	}
	if err := e.SetConstraintCacheLimit(1); err != nil {
		t.Fatal(err)
	}
	if stats, _ := e.ConstraintCacheStats(); stats.Limit != 1 || stats.Size > 1 {
		t.Errorf("limit 1: %+v", stats)
	}
	e.SetConstraintCacheLimit(256)
}

func TestJSONSchemaOptions(t *testing.T) {
	t.Run("lenient", func(t *testing.T) {
		schema := `{"type":"object","properties":{"n":{"type":"integer","minimum":0,"maximum":9}},"required":["n"],"additionalProperties":false,"not":{"required":["m"]}}`
		res := generate(t, 30, "Give a number as JSON.", JSONSchema(schema).Named("loose").WithJSONOptions(JSONOptions{Lenient: true}))
		var v struct{ N *int }
		if err := json.Unmarshal([]byte(res.Text), &v); err != nil || v.N == nil || *v.N < 0 || *v.N > 9 {
			t.Errorf("output %q: %v", res.Text, err)
		}
		if res.ConstraintsSatisfied || res.Validation.Satisfied {
			t.Errorf("a lenient schema reported satisfied: %+v", res.Validation)
		}
		c := res.Validation.Constraints[0]
		if c.Outcome != "partially_enforced" || len(c.RelaxedKeywords) != 1 || c.RelaxedKeywords[0].Keyword != "not" || c.RelaxedKeywords[0].Pointer != "/not" {
			t.Errorf("report %+v", c)
		}
	})
	t.Run("ignored formats", func(t *testing.T) {
		schema := `{"type":"object","properties":{"r":{"type":"string","format":"uri-reference","maxLength":12}},"required":["r"],"additionalProperties":false}`
		res := generate(t, 40, "Give a link as JSON.", JSONSchema(schema).Named("formats"))
		checkSatisfied(t, res, "formats", "json_schema")
		f := res.Validation.Constraints[0].IgnoredFormats
		if len(f) != 1 || f[0].Format != "uri-reference" || f[0].Pointer != "/properties/r/format" {
			t.Errorf("ignored formats %+v", f)
		}
	})
	t.Run("whitespace pattern", func(t *testing.T) {
		// Only the pattern's whitespace may appear between tokens: compiling it is enough to
		// show it reached the library, a bad one is refused there.
		schema := `{"type":"object"}`
		if _, err := sharedEngine(t).Compile(JSONSchema(schema).WithJSONOptions(JSONOptions{WhitespacePattern: "[ ]{0,2}"})); err != nil {
			t.Fatal(err)
		}
		_, err := sharedEngine(t).Compile(JSONSchema(schema).WithJSONOptions(JSONOptions{WhitespacePattern: "(("}))
		expectError(t, err, ErrInvalidConstraint, "")
	})
}

func TestConstraintErrors(t *testing.T) {
	e := sharedEngine(t)
	cases := []struct {
		name   string
		c      Constraint
		needle string
	}{
		{"bad schema JSON", JSONSchema(`{"type": "object",`).Named("broken"), "broken"},
		{"unsupported schema keyword", JSONSchema(`{"type": "array", "uniqueItems": true}`), "uniqueItems"},
		{"bad regex", Regex(`[0-9`).Named("digits"), "digits"},
		{"bad grammar", Lark(`start: undefined_rule`), "undefined_rule"},
		{"bad GBNF", GBNF("root ::= \"a\"\nitem ::= [z-a]"), "GBNF line 2, column 11"},
		{"token out of range", TokenMask([]uint32{1 << 30}, nil), "1073741824"},
		{"empty choice", Choice(), ""},
		{"unsupported keywords by pointer", JSONSchema(`{"properties": {"a": {"not": {}}}, "if": {}}`), `unsupported keywords "if" at /if, "not" at /properties/a/not`},
		{"strict formats", JSONSchema(`{"type": "string", "format": "regex"}`).WithJSONOptions(JSONOptions{StrictFormats: true}), `unknown format "regex" at /format`},
		{"JSON options on a grammar", Lark(`start: "x"`).WithJSONOptions(JSONOptions{Lenient: true}), "MAZE_CONSTRAINT_KIND_JSON_SCHEMA"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.Compile(tc.c)
			expectError(t, err, ErrInvalidConstraint, tc.needle)
			// As part of a request: refused before generating.
			_, err = newSession(t, e).Generate(t.Context(), Request{Prompt: "x", Constraints: []Constraint{tc.c}})
			expectError(t, err, ErrInvalidConstraint, tc.needle)
		})
	}
	_, err := e.Compile(Constraint{Kind: 99, Name: "odd"})
	expectError(t, err, ErrInvalidArgument, "desc.kind 99")
	_, err = e.CompileJSON(`{"regex": 5}`)
	expectError(t, err, ErrInvalidConstraint, "")
	// A set that failed midway frees what it had compiled and returns nothing.
	set, err := e.Compile(Regex("a"), Regex("[b"))
	if set != nil || err == nil {
		t.Errorf("partial set %v, %v", set, err)
	}
}
