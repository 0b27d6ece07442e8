package maze

import (
	"bytes"
	"context"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// SchemaProvider lets a type give its own JSON schema to SchemaFor, e.g. a type with a custom
// MarshalJSON. JSONSchema is called on the zero value and must return a JSON schema text.
type SchemaProvider interface {
	JSONSchema() string
}

// SchemaFor derives a JSON schema from a Go type, following encoding/json's rules, so that
// every value valid under it decodes into T.
//
//   - Structs become objects with additionalProperties false. Field names come from `json`
//     tags; `json:"-"` and unexported fields are skipped; embedded structs are flattened. A
//     field is required unless tagged omitempty or omitzero. A pointer field that is required
//     may also be null.
//   - bool → boolean; integers → integer (with the type's range for 8-, 16- and 32-bit types,
//     minimum 0 for unsigned); floats → number; string → string; []byte → base64 string;
//     slices → array; arrays → array of exactly that length; maps with string keys → object;
//     interfaces → any value; time.Time → an RFC 3339 string; other
//     encoding.TextMarshaler types → string.
//   - A `maze` tag adds keywords, separated by ';': enum=a|b|c, description=..., format=...,
//     minLength=N, maxLength=N, minimum=X, maximum=X, minItems=N, maxItems=N, and
//     pattern=REGEX, which must come last (it takes the rest of the tag). On a slice, array or
//     pointer field the value keywords apply to its elements, minItems/maxItems to the array.
//
// Recursive types, channels, functions, complex numbers and maps with non-string keys are
// refused with an error naming the field.
func SchemaFor[T any]() (string, error) {
	s, err := schemaOf(reflect.TypeFor[T]())
	if err != nil {
		return "", err
	}
	out, err := json.Marshal(s)
	return string(out), err
}

// GenerateJSON generates a value of type T: the request is constrained by SchemaFor[T]
// (compact JSON), and the output is decoded into a T. It fails with ErrIncomplete when
// generation ended before the value was complete (length limit, cancel, relaxed constraint);
// the Result is returned with every error that comes after generation.
func GenerateJSON[T any](ctx context.Context, s *Session, req Request) (T, *Result, error) {
	var value T
	t := reflect.TypeFor[T]()
	schema, err := schemaOf(t)
	if err != nil {
		return value, nil, err
	}
	// llguidance's extension: no free whitespace between tokens, so fewer tokens to generate.
	schema = append(schema, field{"x-guidance", object{{"whitespace_flexible", false}}})
	text, err := json.Marshal(schema)
	if err != nil {
		return value, nil, err
	}
	req.Constraints = append(slices.Clip(req.Constraints), JSONSchema(string(text)).Named(typeName(t)))
	res, err := s.Generate(ctx, req)
	if err != nil {
		return value, res, err
	}
	if res.FinishReason != FinishStop || !res.ConstraintsSatisfied {
		return value, res, fmt.Errorf("%w: generation finished with %q after %d tokens (constraints satisfied: %v): %q",
			ErrIncomplete, res.FinishReason, res.GeneratedTokens, res.ConstraintsSatisfied, res.Text)
	}
	dec := json.NewDecoder(strings.NewReader(res.Text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&value); err != nil {
		return value, res, fmt.Errorf("maze: decoding the generated JSON into %s: %w", t, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return value, res, fmt.Errorf("maze: the generated JSON has data after the %s value", t)
	}
	return value, res, nil
}

func typeName(t reflect.Type) string {
	if t.Name() != "" {
		return t.Name()
	}
	return t.String()
}

// object is a JSON object that keeps its keys in order: property order is the order the
// model writes them in.
type object []field

type field struct {
	key   string
	value any
}

func (o object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.key)
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(f.value)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func (o object) get(key string) (any, bool) {
	for _, f := range o {
		if f.key == key {
			return f.value, true
		}
	}
	return nil, false
}

// rfc3339Pattern is what time.Time decodes. A pattern rather than format "date-time", whose
// unbounded fraction of a second lets a small model loop on digits.
const rfc3339Pattern = `^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$`

var (
	timeType           = reflect.TypeFor[time.Time]()
	schemaProviderType = reflect.TypeFor[SchemaProvider]()
	textMarshalerType  = reflect.TypeFor[encoding.TextMarshaler]()
	jsonMarshalerType  = reflect.TypeFor[json.Marshaler]()
)

type schemaBuilder struct {
	inProgress map[reflect.Type]bool
}

func schemaOf(t reflect.Type) (object, error) {
	b := &schemaBuilder{inProgress: map[reflect.Type]bool{}}
	return b.schema(t, typeName(t))
}

func implements(t, iface reflect.Type) bool {
	return t.Implements(iface) || reflect.PointerTo(t).Implements(iface)
}

func (b *schemaBuilder) schema(t reflect.Type, path string) (object, error) {
	if implements(t, schemaProviderType) {
		text := reflect.New(t).Interface().(SchemaProvider).JSONSchema()
		var s object
		if err := json.Unmarshal([]byte(text), (*rawObject)(&s)); err != nil {
			return nil, fmt.Errorf("maze: %s: JSONSchema() of %s is not a JSON object: %w", path, t, err)
		}
		return s, nil
	}
	if t == timeType {
		return object{{"type", "string"}, {"pattern", rfc3339Pattern}}, nil
	}
	if t.Kind() != reflect.Pointer && implements(t, jsonMarshalerType) {
		return nil, fmt.Errorf("maze: %s: %s has its own MarshalJSON; give it a JSONSchema() method (SchemaProvider)", path, t)
	}
	if t.Kind() != reflect.Pointer && implements(t, textMarshalerType) {
		return object{{"type", "string"}}, nil
	}
	switch t.Kind() {
	case reflect.Bool:
		return object{{"type", "boolean"}}, nil
	case reflect.Int8, reflect.Int16, reflect.Int32:
		bits := t.Bits()
		return object{{"type", "integer"}, {"minimum", -(int64(1) << (bits - 1))}, {"maximum", int64(1)<<(bits-1) - 1}}, nil
	case reflect.Int, reflect.Int64:
		return object{{"type", "integer"}}, nil
	case reflect.Uint8, reflect.Uint16, reflect.Uint32:
		return object{{"type", "integer"}, {"minimum", 0}, {"maximum", uint64(1)<<t.Bits() - 1}}, nil
	case reflect.Uint, reflect.Uint64, reflect.Uintptr:
		return object{{"type", "integer"}, {"minimum", 0}}, nil
	case reflect.Float32, reflect.Float64:
		return object{{"type", "number"}}, nil
	case reflect.String:
		return object{{"type", "string"}}, nil
	case reflect.Interface:
		return object{}, nil
	case reflect.Pointer:
		return b.schema(t.Elem(), path)
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 && !implements(t.Elem(), textMarshalerType) {
			return object{{"type", "string"}, {"pattern", `^[A-Za-z0-9+/]*={0,2}$`}}, nil
		}
		items, err := b.schema(t.Elem(), path+"[]")
		if err != nil {
			return nil, err
		}
		return object{{"type", "array"}, {"items", items}}, nil
	case reflect.Array:
		items, err := b.schema(t.Elem(), path+"[]")
		if err != nil {
			return nil, err
		}
		return object{{"type", "array"}, {"items", items}, {"minItems", t.Len()}, {"maxItems", t.Len()}}, nil
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			return nil, fmt.Errorf("maze: %s: map key type %s is not supported (use string keys)", path, t.Key())
		}
		values, err := b.schema(t.Elem(), path+"[]")
		if err != nil {
			return nil, err
		}
		return object{{"type", "object"}, {"additionalProperties", values}}, nil
	case reflect.Struct:
		return b.structSchema(t, path)
	}
	return nil, fmt.Errorf("maze: %s: type %s has no JSON schema", path, t)
}

func (b *schemaBuilder) structSchema(t reflect.Type, path string) (object, error) {
	if b.inProgress[t] {
		return nil, fmt.Errorf("maze: %s: recursive type %s is not supported", path, t)
	}
	b.inProgress[t] = true
	defer delete(b.inProgress, t)

	var props object
	var required []string
	if err := b.addFields(t, path, &props, &required); err != nil {
		return nil, err
	}
	s := object{{"type", "object"}, {"properties", props}}
	if len(required) > 0 {
		s = append(s, field{"required", required})
	}
	return append(s, field{"additionalProperties", false}), nil
}

// addFields adds t's fields in order, flattening embedded structs as encoding/json does (a
// field of the outer struct wins over an embedded one of the same name).
func (b *schemaBuilder) addFields(t reflect.Type, path string, props *object, required *[]string) error {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			et := ft
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				if err := b.addFields(et, path, props, required); err != nil {
					return err
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fpath := path + "." + name
		optional := hasOption(opts, "omitempty") || hasOption(opts, "omitzero")
		s, err := b.schema(ft, fpath)
		if err != nil {
			return err
		}
		if hasOption(opts, "string") {
			if s, err = quotedSchema(ft, fpath); err != nil {
				return err
			}
		}
		if s, err = applyTag(s, f.Tag.Get("maze"), ft, fpath); err != nil {
			return err
		}
		if ft.Kind() == reflect.Pointer && !optional {
			s = object{{"anyOf", []any{s, object{{"type", "null"}}}}}
		}
		if _, dup := props.get(name); dup {
			continue
		}
		*props = append(*props, field{name, s})
		if !optional {
			*required = append(*required, name)
		}
	}
	return nil
}

func hasOption(opts, want string) bool {
	for o := range strings.SplitSeq(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// quotedSchema is the schema of a field tagged `json:",string"`: its value is written inside a
// JSON string.
func quotedSchema(t reflect.Type, path string) (object, error) {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return object{{"type", "string"}, {"enum", []string{"true", "false"}}}, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return object{{"type", "string"}, {"pattern", `^-?(0|[1-9][0-9]{0,18})$`}}, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return object{{"type", "string"}, {"pattern", `^(0|[1-9][0-9]{0,19})$`}}, nil
	case reflect.String:
		return object{{"type", "string"}}, nil
	}
	return nil, fmt.Errorf("maze: %s: the json \",string\" option is not supported on %s", path, t)
}

// applyTag adds the keywords of a `maze` tag to s.
func applyTag(s object, tag string, t reflect.Type, path string) (object, error) {
	if tag == "" {
		return s, nil
	}
	var arrayKeys, valueKeys object
	for tag != "" {
		var item string
		if strings.HasPrefix(tag, "pattern=") {
			item, tag = tag, ""
		} else {
			item, tag, _ = strings.Cut(tag, ";")
		}
		key, val, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("maze: %s: maze tag item %q is not key=value", path, item)
		}
		switch key {
		case "description":
			s = append(s, field{key, val})
		case "minItems", "maxItems":
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("maze: %s: maze tag %s=%q is not a count", path, key, val)
			}
			arrayKeys = append(arrayKeys, field{key, n})
		case "minLength", "maxLength":
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("maze: %s: maze tag %s=%q is not a count", path, key, val)
			}
			valueKeys = append(valueKeys, field{key, n})
		case "minimum", "maximum":
			x, err := strconv.ParseFloat(val, 64)
			if err != nil || math.IsInf(x, 0) || math.IsNaN(x) {
				return nil, fmt.Errorf("maze: %s: maze tag %s=%q is not a number", path, key, val)
			}
			valueKeys = append(valueKeys, field{key, json.Number(val)})
		case "pattern", "format":
			valueKeys = append(valueKeys, field{key, val})
		case "enum":
			values, err := enumValues(elementType(t), val, path)
			if err != nil {
				return nil, err
			}
			valueKeys = append(valueKeys, field{key, values})
		default:
			return nil, fmt.Errorf("maze: %s: unknown maze tag key %q", path, key)
		}
	}
	if len(arrayKeys) > 0 && !isArray(t) {
		return nil, fmt.Errorf("maze: %s: minItems/maxItems need a slice or array, not %s", path, t)
	}
	s = replaceKeys(s, arrayKeys)
	return withElementKeys(s, t, valueKeys), nil
}

func isArray(t reflect.Type) bool {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Kind() == reflect.Slice || t.Kind() == reflect.Array
}

// elementType strips pointers, slices and arrays down to the value the keywords describe.
func elementType(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer || ((t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && t.Elem().Kind() != reflect.Uint8) {
		t = t.Elem()
	}
	return t
}

// withElementKeys sets keys on the schema of t's innermost element (through "items").
func withElementKeys(s object, t reflect.Type, keys object) object {
	if len(keys) == 0 {
		return s
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && t.Elem().Kind() != reflect.Uint8 {
		out := slices.Clone(s)
		for i, f := range out {
			if f.key == "items" {
				out[i].value = withElementKeys(f.value.(object), t.Elem(), keys)
			}
		}
		return out
	}
	return replaceKeys(s, keys)
}

func replaceKeys(s object, keys object) object {
	out := slices.Clone(s)
	for _, k := range keys {
		found := false
		for i := range out {
			if out[i].key == k.key {
				out[i].value, found = k.value, true
			}
		}
		if !found {
			out = append(out, k)
		}
	}
	return out
}

// enumValues parses the '|'-separated values of an enum tag as values of t.
func enumValues(t reflect.Type, list, path string) ([]any, error) {
	var values []any
	for v := range strings.SplitSeq(list, "|") {
		switch t.Kind() {
		case reflect.String:
			values = append(values, v)
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			n, err := strconv.ParseInt(v, 10, t.Bits())
			if err != nil {
				return nil, fmt.Errorf("maze: %s: enum value %q is not a %s", path, v, t)
			}
			values = append(values, n)
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			n, err := strconv.ParseUint(v, 10, t.Bits())
			if err != nil {
				return nil, fmt.Errorf("maze: %s: enum value %q is not a %s", path, v, t)
			}
			values = append(values, n)
		case reflect.Float32, reflect.Float64:
			x, err := strconv.ParseFloat(v, t.Bits())
			if err != nil {
				return nil, fmt.Errorf("maze: %s: enum value %q is not a %s", path, v, t)
			}
			values = append(values, x)
		case reflect.Bool:
			x, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("maze: %s: enum value %q is not a bool", path, v)
			}
			values = append(values, x)
		default:
			return nil, fmt.Errorf("maze: %s: enum is not supported on %s", path, t)
		}
	}
	return values, nil
}

// rawObject decodes a JSON object into an object, keeping key order.
type rawObject object

func (r *rawObject) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != json.Delim('{') {
		return errors.New("not a JSON object")
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return err
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return err
		}
		*r = append(*r, field{key.(string), value})
	}
	_, err = dec.Token()
	return err
}
