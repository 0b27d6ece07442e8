package maze

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

type Address struct {
	Street string `json:"street"`
	City   string `json:"city" maze:"description=The city name;maxLength=30"`
}

type Audit struct {
	CreatedBy string `json:"created_by"`
}

type Order struct {
	ID       int64             `json:"id"`
	Status   string            `json:"status" maze:"enum=pending|shipped|delivered"`
	Priority uint8             `json:"priority"`
	Items    []Item            `json:"items" maze:"minItems=1;maxItems=5"`
	Ship     *Address          `json:"ship_to"`
	Bill     *Address          `json:"bill_to,omitempty"`
	Notes    string            `json:"notes,omitempty"`
	Tags     []string          `json:"tags" maze:"enum=fragile|gift;maxItems=2"`
	Scores   [2]float64        `json:"scores"`
	Extra    map[string]int    `json:"extra"`
	Any      any               `json:"any"`
	When     time.Time         `json:"when"`
	Code     string            `json:"code" maze:"pattern=^[A-Z]{3};[0-9]+$"`
	Count    int               `json:"count,string"`
	Blob     []byte            `json:"blob"`
	Skipped  string            `json:"-"`
	hidden   string            //nolint:unused
	Labels   map[string]string `json:"labels,omitzero"`
	Audit
}

type Item struct {
	SKU      string  `json:"sku"`
	Quantity int     `json:"quantity" maze:"minimum=1;maximum=99"`
	Price    float64 `json:"price"`
}

func TestSchemaFor(t *testing.T) {
	got, err := SchemaFor[Order]()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"object","properties":{` +
		`"id":{"type":"integer"},` +
		`"status":{"type":"string","enum":["pending","shipped","delivered"]},` +
		`"priority":{"type":"integer","minimum":0,"maximum":255},` +
		`"items":{"type":"array","items":{"type":"object","properties":{"sku":{"type":"string"},"quantity":{"type":"integer","minimum":1,"maximum":99},"price":{"type":"number"}},"required":["sku","quantity","price"],"additionalProperties":false},"minItems":1,"maxItems":5},` +
		`"ship_to":{"anyOf":[{"type":"object","properties":{"street":{"type":"string"},"city":{"type":"string","description":"The city name","maxLength":30}},"required":["street","city"],"additionalProperties":false},{"type":"null"}]},` +
		`"bill_to":{"type":"object","properties":{"street":{"type":"string"},"city":{"type":"string","description":"The city name","maxLength":30}},"required":["street","city"],"additionalProperties":false},` +
		`"notes":{"type":"string"},` +
		`"tags":{"type":"array","items":{"type":"string","enum":["fragile","gift"]},"maxItems":2},` +
		`"scores":{"type":"array","items":{"type":"number"},"minItems":2,"maxItems":2},` +
		`"extra":{"type":"object","additionalProperties":{"type":"integer"}},` +
		`"any":{},` +
		`"when":{"type":"string","pattern":` + mustJSON(rfc3339Pattern) + `},` +
		`"code":{"type":"string","pattern":"^[A-Z]{3};[0-9]+$"},` +
		`"count":{"type":"string","pattern":"^-?(0|[1-9][0-9]{0,18})$"},` +
		`"blob":{"type":"string","pattern":"^[A-Za-z0-9+/]*={0,2}$"},` +
		`"labels":{"type":"object","additionalProperties":{"type":"string"}},` +
		`"created_by":{"type":"string"}},` +
		`"required":["id","status","priority","items","ship_to","tags","scores","extra","any","when","code","count","blob","created_by"],` +
		`"additionalProperties":false}`
	if got != want {
		t.Errorf("schema\n got %s\nwant %s", got, want)
	}
	if !json.Valid([]byte(got)) {
		t.Errorf("not JSON")
	}

	for name, f := range map[string]func() (string, error){
		"int":        SchemaFor[int],
		"[]string":   SchemaFor[[]string],
		"*bool":      SchemaFor[*bool],
		"int16":      SchemaFor[int16],
		"map":        SchemaFor[map[string]bool],
		"custom":     SchemaFor[Celsius],
		"text":       SchemaFor[textValue],
		"empty":      SchemaFor[struct{}],
		"interfaces": SchemaFor[[]any],
	} {
		s, err := f()
		want := map[string]string{
			"int":        `{"type":"integer"}`,
			"[]string":   `{"type":"array","items":{"type":"string"}}`,
			"*bool":      `{"type":"boolean"}`,
			"int16":      `{"type":"integer","minimum":-32768,"maximum":32767}`,
			"map":        `{"type":"object","additionalProperties":{"type":"boolean"}}`,
			"custom":     `{"type":"number","minimum":-273.15}`,
			"text":       `{"type":"string"}`,
			"empty":      `{"type":"object","properties":{},"additionalProperties":false}`,
			"interfaces": `{"type":"array","items":{}}`,
		}[name]
		if err != nil || s != want {
			t.Errorf("%s: %s, %v; want %s", name, s, err, want)
		}
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// Celsius brings its own schema.
type Celsius float64

func (Celsius) JSONSchema() string { return `{"type":"number","minimum":-273.15}` }

type textValue struct{ v string }

func (t textValue) MarshalText() ([]byte, error) { return []byte(t.v), nil }

type Node struct {
	Value    int     `json:"value"`
	Children []*Node `json:"children"`
}

type badMarshaler struct{}

func (badMarshaler) MarshalJSON() ([]byte, error) { return []byte(`1`), nil }

type badSchema struct{}

func (badSchema) JSONSchema() string { return `[1, 2]` }

func TestSchemaForErrors(t *testing.T) {
	cases := map[string]struct {
		f      func() (string, error)
		needle string
	}{
		"recursive":  {SchemaFor[Node], "Node.children[]: recursive type maze.Node"},
		"channel":    {SchemaFor[struct{ C chan int }], ".C: type chan int"},
		"func":       {SchemaFor[func()], "func()"},
		"int keys":   {SchemaFor[map[int]string], "map key type int"},
		"marshaler":  {SchemaFor[badMarshaler], "MarshalJSON"},
		"bad schema": {SchemaFor[badSchema], "not a JSON object"},
		"bad enum": {SchemaFor[struct {
			N int `maze:"enum=1|two"`
		}], `enum value "two"`},
		"unknown key": {SchemaFor[struct {
			S string `maze:"colour=red"`
		}], `unknown maze tag key "colour"`},
		"not k=v": {SchemaFor[struct {
			S string `maze:"enum"`
		}], "not key=value"},
		"items": {SchemaFor[struct {
			S string `maze:"minItems=1"`
		}], "need a slice or array"},
		"bad number": {SchemaFor[struct {
			N int `maze:"minimum=x"`
		}], "not a number"},
		"string opt": {SchemaFor[struct {
			F []int `json:",string"`
		}], `",string" option`},
		"complex": {SchemaFor[complex128], "complex128"},
	}
	for name, tc := range cases {
		s, err := tc.f()
		if err == nil || !strings.Contains(err.Error(), tc.needle) {
			t.Errorf("%s: %q, %v; want an error containing %q", name, s, err, tc.needle)
		}
	}
}

type Recipe struct {
	Title       string   `json:"title" maze:"maxLength=40"`
	Cuisine     string   `json:"cuisine" maze:"enum=italian|french|japanese|mexican"`
	Servings    int      `json:"servings" maze:"minimum=1;maximum=12"`
	Ingredients []string `json:"ingredients" maze:"minItems=2;maxItems=4;maxLength=24"`
	Vegetarian  bool     `json:"vegetarian"`
	Rating      *float64 `json:"rating,omitempty"`
}

func TestGenerateJSON(t *testing.T) {
	s := newSession(t, sharedEngine(t))
	recipe, res, err := GenerateJSON[Recipe](t.Context(), s, Request{
		Messages: []Message{{Role: "user", Content: "Give me a simple pasta recipe as JSON."}},
		Params:   greedy(200),
	})
	if err != nil {
		t.Fatalf("%v (output %q)", err, res.Text)
	}
	if recipe.Title == "" || len(recipe.Title) > 40 || recipe.Servings < 1 || recipe.Servings > 12 ||
		len(recipe.Ingredients) < 2 || len(recipe.Ingredients) > 4 ||
		!slices.Contains([]string{"italian", "french", "japanese", "mexican"}, recipe.Cuisine) {
		t.Errorf("decoded %+v from %q", recipe, res.Text)
	}
	// Compact output (no free whitespace) that re-encodes to the same value.
	var again Recipe
	if err := json.Unmarshal([]byte(res.Text), &again); err != nil || !reflect.DeepEqual(again, recipe) {
		t.Errorf("round trip: %+v vs %+v", again, recipe)
	}
	if strings.Contains(res.Text, "\n") || strings.Contains(res.Text, ": ") {
		t.Errorf("expected compact JSON: %q", res.Text)
	}
	if len(res.Validation.Constraints) != 1 || res.Validation.Constraints[0].Name != "Recipe" {
		t.Errorf("validation %s", res.ValidationJSON)
	}

	// time.Time fields decode: the schema bounds their format.
	type Meeting struct {
		Topic string    `json:"topic" maze:"maxLength=30"`
		At    time.Time `json:"at"`
	}
	meeting, res, err := GenerateJSON[Meeting](t.Context(), s, Request{Prompt: "A team meeting as JSON:", Params: greedy(80)})
	if err != nil || meeting.At.IsZero() {
		t.Errorf("meeting %+v from %q: %v", meeting, res.Text, err)
	}

	// Cut by the token limit: a clear error, and the partial output to look at.
	_, res, err = GenerateJSON[Recipe](t.Context(), s, Request{Prompt: "Recipe:", Params: greedy(4)})
	if !errors.Is(err, ErrIncomplete) || res == nil || res.FinishReason != FinishLength || !strings.Contains(err.Error(), "length") {
		t.Errorf("cut output: %v, %+v", err, res)
	}
	// Types without a schema are refused before generating.
	if _, res, err := GenerateJSON[chan int](t.Context(), s, Request{Prompt: "x"}); err == nil || res != nil {
		t.Errorf("chan: %v, %v", res, err)
	}
}
