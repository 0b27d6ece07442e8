package maze

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The Go copies of the header's enums (Status and its sentinels, FinishReason) are checked
// against the header and the library: a status or finish reason added there fails these tests
// until this package learns it.

// headerEnumerators reads include/maze.h's enumerators that start with prefix, by name.
func headerEnumerators(t *testing.T, prefix string) map[string]int32 {
	t.Helper()
	src, err := os.ReadFile("../../include/maze.h")
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]int32{}
	re := regexp.MustCompile(`(?m)^\s*(` + prefix + `[A-Z0-9_]+) = (-?[0-9]+),$`)
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		v, err := strconv.ParseInt(m[2], 10, 32)
		if err != nil {
			t.Fatal(err)
		}
		found[m[1]] = int32(v)
	}
	if len(found) == 0 {
		t.Fatalf("no %s* enumerator in maze.h", prefix)
	}
	return found
}

// parseFile parses one of this package's files.
func parseFile(t *testing.T, name string) *ast.File {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// constantsOf maps the constants of type typeName declared in file as `Name T = C.ENUMERATOR`
// to their enumerator.
func constantsOf(t *testing.T, file *ast.File, typeName string) map[string]string {
	t.Helper()
	found := map[string]string{}
	ast.Inspect(file, func(n ast.Node) bool {
		spec, ok := n.(*ast.ValueSpec)
		if !ok || len(spec.Names) != 1 || len(spec.Values) != 1 {
			return true
		}
		if typ, ok := spec.Type.(*ast.Ident); !ok || typ.Name != typeName {
			return true
		}
		sel, ok := spec.Values[0].(*ast.SelectorExpr)
		if !ok {
			t.Errorf("%s is not defined from a C enumerator", spec.Names[0].Name)
			return true
		}
		found[spec.Names[0].Name] = sel.Sel.Name
		return true
	})
	return found
}

// sameWords compares a Go name and an enumerator without case and underscores:
// InvalidUTF8 and INVALID_UTF8 match.
func sameWords(goName, enumerator string) bool {
	return strings.EqualFold(goName, strings.ReplaceAll(enumerator, "_", ""))
}

// expectMirror checks Go constants against the header's enumerators: one constant each, named
// after it.
func expectMirror(t *testing.T, constants map[string]string, enumerators map[string]int32, goPrefix, cPrefix string) {
	t.Helper()
	mirrored := map[string]bool{}
	for goName, enumerator := range constants {
		mirrored[enumerator] = true
		if _, ok := enumerators[enumerator]; !ok {
			t.Errorf("%s = C.%s: maze.h has no such enumerator", goName, enumerator)
		}
		if !sameWords(strings.TrimPrefix(goName, goPrefix), strings.TrimPrefix(enumerator, cPrefix)) {
			t.Errorf("%s is defined as C.%s: the names differ", goName, enumerator)
		}
	}
	for enumerator := range enumerators {
		if !mirrored[enumerator] {
			t.Errorf("maze.h defines %s but this package has no constant for it", enumerator)
		}
	}
}

func TestStatusesMirrorTheHeaderAndTheLibrary(t *testing.T) {
	enumerators := headerEnumerators(t, "MAZE_STATUS_")
	file := parseFile(t, "errors.go")
	constants := constantsOf(t, file, "Status")
	expectMirror(t, constants, enumerators, "Status", "MAZE_STATUS_")
	for name, value := range enumerators {
		if got := Status(value).String(); got != name {
			t.Errorf("maze_status_name(%d) = %s, maze.h says %s", value, got, name)
		}
	}
	for v := int32(-1); v < 256; v++ {
		name := Status(v).String()
		if value, ok := enumerators[name]; name != "MAZE_STATUS_UNKNOWN" && (!ok || value != v) {
			t.Errorf("the library names %d %s, which maze.h does not define as %d", v, name, v)
		}
	}
	// Every status but OK has its sentinel, ErrX = &Error{Status: StatusX}.
	sentinels := map[string]bool{}
	ast.Inspect(file, func(n ast.Node) bool {
		if kv, ok := n.(*ast.KeyValueExpr); ok {
			if key, ok := kv.Key.(*ast.Ident); ok && key.Name == "Status" {
				if value, ok := kv.Value.(*ast.Ident); ok {
					sentinels[value.Name] = true
				}
			}
		}
		return true
	})
	for goName := range constants {
		if goName != "StatusOK" && !sentinels[goName] {
			t.Errorf("%s has no Err sentinel", goName)
		}
	}
}

func TestFinishReasonsMirrorTheHeaderAndTheLibrary(t *testing.T) {
	enumerators := headerEnumerators(t, "MAZE_FINISH_REASON_")
	constants := constantsOf(t, parseFile(t, "result.go"), "FinishReason")
	expectMirror(t, constants, enumerators, "Finish", "MAZE_FINISH_REASON_")
	for name, value := range enumerators {
		want := strings.ToLower(strings.TrimPrefix(name, "MAZE_FINISH_REASON_"))
		if got := FinishReason(value).String(); got != want {
			t.Errorf("maze_finish_reason_name(%d) = %s, want %s (maze.h: %s)", value, got, want, name)
		}
	}
	for v := int32(-1); v < 256; v++ {
		name := FinishReason(v).String()
		if value, ok := enumerators["MAZE_FINISH_REASON_"+strings.ToUpper(name)]; name != "unknown" && (!ok || value != v) {
			t.Errorf("the library names finish reason %d %q, which maze.h does not define as %d", v, name, v)
		}
	}
}

func TestToolFormatsMirrorTheHeader(t *testing.T) {
	enumerators := headerEnumerators(t, "MAZE_TOOL_FORMAT_")
	constants := constantsOf(t, parseFile(t, "tools.go"), "ToolFormat")
	expectMirror(t, constants, enumerators, "ToolFormat", "MAZE_TOOL_FORMAT_")
}
