package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// Scope is what a route expression sees when it is evaluated for one
// connection: claims.*, path.*, query.*, header.* (header names lower-case).
type Scope struct {
	// Claims are the verified JWT claims as decoded from JSON: string,
	// float64 or json.Number, bool, nil, map[string]any, []any (other Go
	// integer types and []string are accepted too). Nil when no token.
	Claims map[string]any
	Path   map[string]string // the route's {param} values
	Query  map[string]string // first value of each query parameter
	Header map[string]string // handshake headers, names lower-case
}

// Template is a route expression (e.g. channels = ["room:${path.room}"])
// kept unevaluated until a connection supplies its Scope. Parse has already
// checked that it references only claims, path (with the route's own
// params), query and header, and calls only the template functions, so a
// runtime error means the connection's data does not fit (a missing claim
// or query parameter). A Template is safe for concurrent use.
type Template struct {
	expr  hcl.Expression
	src   string
	funcs map[string]function.Function
}

// Source returns the expression as written in sidecar.hcl, for logs.
func (t *Template) Source() string {
	if t == nil {
		return ""
	}
	return t.src
}

// Eval evaluates the expression as a list of strings for one connection.
// Numbers and bools in the result are converted to strings. A nil Template
// yields nil, nil. Errors wrap the HCL diagnostics and carry no claim values.
func (t *Template) Eval(s Scope) ([]string, error) {
	if t == nil || t.expr == nil {
		return nil, nil
	}
	v, err := t.value(s)
	if err != nil {
		return nil, err
	}
	lv, err := convert.Convert(v, cty.List(cty.String))
	if err != nil {
		return nil, fmt.Errorf("config: evaluate %s: want a list of strings: %w", t.src, err)
	}
	if lv.IsNull() {
		return nil, fmt.Errorf("config: evaluate %s: the result is null", t.src)
	}
	out := make([]string, 0, lv.LengthInt())
	for it := lv.ElementIterator(); it.Next(); {
		i, e := it.Element()
		if e.IsNull() {
			return nil, fmt.Errorf("config: evaluate %s: element %s is null", t.src, i.AsBigFloat().Text('f', 0))
		}
		out = append(out, e.AsString())
	}
	return out, nil
}

// EvalString evaluates the expression as one string (used for
// per-connection stream paths such as "/users/${claims.sub}/events").
func (t *Template) EvalString(s Scope) (string, error) {
	if t == nil || t.expr == nil {
		return "", errors.New("config: evaluate: no expression")
	}
	v, err := t.value(s)
	if err != nil {
		return "", err
	}
	sv, err := convert.Convert(v, cty.String)
	if err != nil {
		return "", fmt.Errorf("config: evaluate %s: want a string: %w", t.src, err)
	}
	if sv.IsNull() {
		return "", fmt.Errorf("config: evaluate %s: the result is null", t.src)
	}
	return sv.AsString(), nil
}

func (t *Template) value(s Scope) (cty.Value, error) {
	claims, err := claimsValue(s.Claims)
	if err != nil {
		return cty.NilVal, fmt.Errorf("config: evaluate %s: claims: %w", t.src, err)
	}
	ctx := &hcl.EvalContext{
		Variables: map[string]cty.Value{
			"claims": claims,
			"path":   stringMap(s.Path, false),
			"query":  stringMap(s.Query, false),
			"header": stringMap(s.Header, true),
		},
		Functions: t.funcs,
	}
	v, diags := t.expr.Value(ctx)
	if diags.HasErrors() {
		return cty.NilVal, fmt.Errorf("config: evaluate %s: %w", t.src, diags)
	}
	if !v.IsWhollyKnown() {
		return cty.NilVal, fmt.Errorf("config: evaluate %s: the result is not known", t.src)
	}
	return v, nil
}

// templateFuncs are the functions a template may call. env() is absent on
// purpose: templates run per connection and the environment is a load-time
// concern.
func templateFuncs() map[string]function.Function {
	return map[string]function.Function{
		"lower":    stdlib.LowerFunc,
		"upper":    stdlib.UpperFunc,
		"lookup":   stdlib.LookupFunc,
		"coalesce": stdlib.CoalesceFunc,
		"concat":   stdlib.ConcatFunc,
	}
}

const templateFuncNames = "lower, upper, lookup, coalesce and concat"

// stringMap converts a Go map to a cty map of strings (empty, not null,
// when m is empty, so lookup(query, "x", "") works on every connection).
func stringMap(m map[string]string, lowerKeys bool) cty.Value {
	if len(m) == 0 {
		return cty.MapValEmpty(cty.String)
	}
	vals := make(map[string]cty.Value, len(m))
	for k, v := range m {
		if lowerKeys {
			k = strings.ToLower(k)
		}
		vals[validUTF8(k)] = cty.StringVal(validUTF8(v))
	}
	return cty.MapVal(vals)
}

// maxClaimDepth bounds recursion over nested claims; real tokens are a few
// levels deep.
const maxClaimDepth = 32

func claimsValue(claims map[string]any) (cty.Value, error) {
	if len(claims) == 0 {
		return cty.EmptyObjectVal, nil
	}
	return anyValue(claims, 0)
}

// anyValue converts JSON-shaped Go values to cty. Objects become cty
// objects (so claims.sub reads naturally) and arrays become tuples (their
// elements may differ in type).
func anyValue(v any, depth int) (cty.Value, error) {
	if depth > maxClaimDepth {
		return cty.NilVal, errors.New("nested too deeply")
	}
	switch x := v.(type) {
	case nil:
		return cty.NullVal(cty.DynamicPseudoType), nil
	case string:
		return cty.StringVal(validUTF8(x)), nil
	case bool:
		return cty.BoolVal(x), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return cty.NilVal, errors.New("number is not finite")
		}
		return cty.NumberFloatVal(x), nil
	case float32:
		return anyValue(float64(x), depth)
	case json.Number:
		n, err := cty.ParseNumberVal(string(x))
		if err != nil {
			return cty.NilVal, fmt.Errorf("number %q: %w", string(x), err)
		}
		return n, nil
	case int:
		return cty.NumberIntVal(int64(x)), nil
	case int64:
		return cty.NumberIntVal(x), nil
	case int32:
		return cty.NumberIntVal(int64(x)), nil
	case uint64:
		return cty.NumberUIntVal(x), nil
	case uint32:
		return cty.NumberUIntVal(uint64(x)), nil
	case []string:
		vals := make([]cty.Value, len(x))
		for i, s := range x {
			vals[i] = cty.StringVal(validUTF8(s))
		}
		return cty.TupleVal(vals), nil
	case []any:
		vals := make([]cty.Value, len(x))
		for i, e := range x {
			ev, err := anyValue(e, depth+1)
			if err != nil {
				return cty.NilVal, err
			}
			vals[i] = ev
		}
		return cty.TupleVal(vals), nil
	case map[string]any:
		attrs := make(map[string]cty.Value, len(x))
		for k, e := range x {
			ev, err := anyValue(e, depth+1)
			if err != nil {
				return cty.NilVal, fmt.Errorf("%s: %w", k, err)
			}
			attrs[validUTF8(k)] = ev
		}
		return cty.ObjectVal(attrs), nil
	}
	return cty.NilVal, fmt.Errorf("unsupported claim type %T", v)
}

// validUTF8 keeps client-supplied bytes from reaching cty, whose string
// operations are undefined on invalid UTF-8.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// templateSpec says what a template may reference where it is used.
type templateSpec struct {
	attr   string   // attribute name for messages: "channels"
	where  string   // "route \"/ws/{room}\"" for messages
	vars   []string // allowed root variables
	params []string // route {params}; only meaningful when "path" is in vars
	noAuth bool     // the route has auth = "none": claims are always empty
	want   cty.Type // result type: list(string) or string
	wantIs string   // how to say want in a message
}

// checkTemplate reports, at load time, every problem a template would hit
// on every connection: unknown variables, path params the route does not
// have, upper-case header names, unknown functions and a result of the
// wrong type (found by evaluating with unknown values).
func checkTemplate(expr hcl.Expression, spec templateSpec) hcl.Diagnostics {
	var diags hcl.Diagnostics
	allowed := map[string]bool{}
	for _, v := range spec.vars {
		allowed[v] = true
	}
	for _, tr := range expr.Variables() {
		root := tr.RootName()
		rng := tr.SourceRange()
		switch {
		case !allowed[root]:
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Unknown variable in expression",
				Detail:   fmt.Sprintf("%s in %s can use only %s; there is no %q.", spec.attr, spec.where, orList(spec.vars), root),
				Subject:  &rng,
			})
		case root == "claims" && spec.noAuth:
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Claims without authentication",
				Detail:   fmt.Sprintf("%s in %s uses claims, but the route has auth = \"none\", so there are never any claims.", spec.attr, spec.where),
				Subject:  &rng,
			})
		case root == "path" || root == "header":
			if len(tr) < 2 {
				continue
			}
			name, ok := stepName(tr[1])
			if !ok {
				continue
			}
			if root == "path" && !contains(spec.params, name) {
				has := "has no {params}"
				if len(spec.params) > 0 {
					has = "has {" + strings.Join(spec.params, "}, {") + "}"
				}
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  "Unknown path parameter",
					Detail:   fmt.Sprintf("path.%s is not a parameter of %s: its path %s.", name, spec.where, has),
					Subject:  &rng,
				})
			}
			if root == "header" && name != strings.ToLower(name) {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  "Header names are lower-case",
					Detail:   fmt.Sprintf("Write header[%q]: header names are matched in lower case.", strings.ToLower(name)),
					Subject:  &rng,
				})
			}
		}
	}
	funcs := templateFuncs()
	if syn, ok := expr.(hclsyntax.Expression); ok {
		hclsyntax.VisitAll(syn, func(n hclsyntax.Node) hcl.Diagnostics {
			if call, ok := n.(*hclsyntax.FunctionCallExpr); ok {
				if _, known := funcs[call.Name]; !known {
					diags = append(diags, &hcl.Diagnostic{
						Severity: hcl.DiagError,
						Summary:  "Unknown function in expression",
						Detail:   fmt.Sprintf("%s can call only %s; there is no %s().", spec.attr, templateFuncNames, call.Name),
						Subject:  call.NameRange.Ptr(),
					})
				}
			}
			return nil
		})
	}
	if diags.HasErrors() {
		return diags
	}

	// Evaluate with unknown values: HCL still checks operators, function
	// argument types and the shape of the result.
	pathAttrs := map[string]cty.Value{}
	for _, p := range spec.params {
		pathAttrs[p] = cty.UnknownVal(cty.String)
	}
	ctx := &hcl.EvalContext{
		Variables: map[string]cty.Value{
			"claims": cty.DynamicVal,
			"path":   cty.ObjectVal(pathAttrs),
			"query":  cty.UnknownVal(cty.Map(cty.String)),
			"header": cty.UnknownVal(cty.Map(cty.String)),
		},
		Functions: funcs,
	}
	v, vdiags := expr.Value(ctx)
	if vdiags.HasErrors() {
		return append(diags, vdiags...)
	}
	if _, err := convert.Convert(v, spec.want); err != nil || (v.IsKnown() && v.IsNull()) {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Invalid expression result",
			Detail:   fmt.Sprintf("%s in %s must be %s.", spec.attr, spec.where, spec.wantIs),
			Subject:  expr.Range().Ptr(),
		})
	}
	return diags
}

// stepName returns the key of path.x or path["x"].
func stepName(step hcl.Traverser) (string, bool) {
	switch s := step.(type) {
	case hcl.TraverseAttr:
		return s.Name, true
	case hcl.TraverseIndex:
		if s.Key.Type() == cty.String && s.Key.IsKnown() && !s.Key.IsNull() {
			return s.Key.AsString(), true
		}
	}
	return "", false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// orList renders ["a","b","c"] as "a, b or c".
func orList(items []string) string {
	switch len(items) {
	case 0:
		return "nothing"
	case 1:
		return items[0]
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}
