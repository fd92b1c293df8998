package config

import (
	"fmt"
	"math/big"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// converter turns the raw gohcl structs into Config in one pass, filling
// defaults and collecting a diagnostic for every bad value instead of
// stopping at the first. Each getter takes the attribute (nil when absent)
// and the default, and returns the default after reporting a problem so
// later checks keep running on sane values.
type converter struct {
	loader
	ctx      *hcl.EvalContext
	filename string
	src      []byte
	diags    hcl.Diagnostics
}

// errAt reports a problem with an attribute's value: the subject is the
// value (what to fix) and the context the whole attribute line.
func (c *converter) errAt(a *hcl.Attribute, summary, detail string) {
	if a == nil { // cannot happen by construction; a position-less error beats a panic
		c.diags = append(c.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail})
		return
	}
	c.diags = append(c.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   detail,
		Subject:  a.Expr.Range().Ptr(),
		Context:  a.Range.Ptr(),
	})
}

// errElem reports a problem with element i of a list attribute, pointing at
// the element when the list is written literally.
func (c *converter) errElem(a *hcl.Attribute, i int, summary, detail string) {
	if tup, ok := a.Expr.(*hclsyntax.TupleConsExpr); ok && i >= 0 && i < len(tup.Exprs) {
		c.diags = append(c.diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  summary,
			Detail:   detail,
			Subject:  tup.Exprs[i].Range().Ptr(),
			Context:  a.Range.Ptr(),
		})
		return
	}
	c.errAt(a, summary, detail)
}

// errRange reports a problem located at a block header or label.
func (c *converter) errRange(r hcl.Range, summary, detail string) {
	c.diags = append(c.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   detail,
		Subject:  r.Ptr(),
	})
}

// value evaluates an attribute. ok is false when it is absent, null (null
// means "use the default", as in Terraform) or failed to evaluate (the
// diagnostic is already recorded).
func (c *converter) value(a *hcl.Attribute) (cty.Value, bool) {
	if a == nil {
		return cty.NilVal, false
	}
	v, diags := a.Expr.Value(c.ctx)
	c.diags = append(c.diags, diags...)
	if diags.HasErrors() || v.IsNull() {
		return cty.NilVal, false
	}
	if !v.IsWhollyKnown() {
		c.errAt(a, "Invalid value", fmt.Sprintf("The value of %s must be known when the file is loaded.", a.Name))
		return cty.NilVal, false
	}
	return v, true
}

func (c *converter) str(a *hcl.Attribute, def string) string {
	v, ok := c.value(a)
	if !ok {
		return def
	}
	sv, err := convert.Convert(v, cty.String)
	if err != nil {
		c.errAt(a, "Invalid value", fmt.Sprintf("%s must be a string; got %s.", a.Name, v.Type().FriendlyName()))
		return def
	}
	return sv.AsString()
}

// text reads a string that must be present and non-null once written (URLs,
// paths, addresses, secrets); ok is false when absent or already reported,
// so callers skip their own checks instead of piling on a second message.
func (c *converter) text(a *hcl.Attribute) (string, bool) {
	if a == nil {
		return "", false
	}
	v, diags := a.Expr.Value(c.ctx)
	c.diags = append(c.diags, diags...)
	switch {
	case diags.HasErrors():
		return "", false
	case v.IsNull():
		c.errAt(a, "Invalid value", fmt.Sprintf("%s must not be null; remove the line to leave it unset.", a.Name))
		return "", false
	case !v.IsWhollyKnown():
		c.errAt(a, "Invalid value", fmt.Sprintf("The value of %s must be known when the file is loaded.", a.Name))
		return "", false
	}
	sv, err := convert.Convert(v, cty.String)
	if err != nil {
		c.errAt(a, "Invalid value", fmt.Sprintf("%s must be a string; got %s.", a.Name, v.Type().FriendlyName()))
		return "", false
	}
	return sv.AsString(), true
}

// strList returns nil for an empty list so that "absent" and "[]" give
// identical Configs.
func (c *converter) strList(a *hcl.Attribute, def []string) []string {
	v, ok := c.value(a)
	if !ok {
		return def
	}
	lv, err := convert.Convert(v, cty.List(cty.String))
	if err != nil {
		c.errAt(a, "Invalid value", fmt.Sprintf("%s must be a list of strings, like [\"a\", \"b\"]; got %s.", a.Name, v.Type().FriendlyName()))
		return def
	}
	var out []string
	for it := lv.ElementIterator(); it.Next(); {
		i, e := it.Element()
		if e.IsNull() {
			n, _ := i.AsBigFloat().Int64()
			c.errElem(a, int(n), "Invalid value", fmt.Sprintf("%s must not contain null.", a.Name))
			return def
		}
		out = append(out, e.AsString())
	}
	return out
}

func (c *converter) boolean(a *hcl.Attribute, def bool) bool {
	v, ok := c.value(a)
	if !ok {
		return def
	}
	bv, err := convert.Convert(v, cty.Bool)
	if err != nil {
		c.errAt(a, "Invalid value", fmt.Sprintf("%s must be true or false.", a.Name))
		return def
	}
	return bv.True()
}

// integer reads a whole number in [min, max].
func (c *converter) integer(a *hcl.Attribute, def, min, max int) int {
	v, ok := c.value(a)
	if !ok {
		return def
	}
	nv, err := convert.Convert(v, cty.Number)
	bf := big.NewFloat(0)
	if err == nil {
		bf = nv.AsBigFloat()
	}
	if err != nil || !bf.IsInt() || bf.Cmp(big.NewFloat(float64(min))) < 0 || bf.Cmp(big.NewFloat(float64(max))) > 0 {
		c.errAt(a, "Invalid value", fmt.Sprintf("%s must be a whole number from %d to %d.", a.Name, min, max))
		return def
	}
	n, _ := bf.Int64()
	return int(n)
}

// positive is the minimum for durations that must be above zero.
const positive = time.Nanosecond

func (c *converter) duration(a *hcl.Attribute, def, min time.Duration) time.Duration {
	v, ok := c.value(a)
	if !ok {
		return def
	}
	sv, err := convert.Convert(v, cty.String)
	if err != nil {
		c.errAt(a, "Invalid duration", fmt.Sprintf("%s must be a duration string like \"30s\".", a.Name))
		return def
	}
	s := sv.AsString()
	d, err := parseDuration(s)
	if err != nil {
		c.errAt(a, "Invalid duration", fmt.Sprintf("%s = %q is not valid: %s.", a.Name, s, err))
		return def
	}
	if d < min {
		want := "above zero"
		if min > positive {
			want = "at least " + min.String()
		}
		c.errAt(a, "Invalid duration", fmt.Sprintf("%s must be %s.", a.Name, want))
		return def
	}
	return d
}

func (c *converter) size(a *hcl.Attribute, def, min, max int64) int64 {
	v, ok := c.value(a)
	if !ok {
		return def
	}
	sv, err := convert.Convert(v, cty.String)
	if err != nil {
		c.errAt(a, "Invalid size", fmt.Sprintf("%s must be a size string like \"64KiB\".", a.Name))
		return def
	}
	s := sv.AsString()
	n, err := parseSize(s)
	if err != nil {
		c.errAt(a, "Invalid size", fmt.Sprintf("%s = %q is not valid: %s.", a.Name, s, err))
		return def
	}
	if n < min || n > max {
		c.errAt(a, "Invalid size", fmt.Sprintf("%s must be from %s to %s.", a.Name, formatSize(min), formatSize(max)))
		return def
	}
	return n
}

// rate reads a rate string; the burst comes from its own attribute.
func (c *converter) rate(a *hcl.Attribute, def Rate, bytes bool) Rate {
	v, ok := c.value(a)
	if !ok {
		return def
	}
	sv, err := convert.Convert(v, cty.String)
	if err != nil {
		c.errAt(a, "Invalid rate", fmt.Sprintf("%s must be a rate string like \"10/s\".", a.Name))
		return def
	}
	s := sv.AsString()
	r, err := parseRate(s, bytes)
	if err != nil {
		c.errAt(a, "Invalid rate", fmt.Sprintf("%s = %q is not valid: %s.", a.Name, s, err))
		return def
	}
	return r
}

// enum reads a string that must be one of allowed.
func (c *converter) enum(a *hcl.Attribute, def string, allowed ...string) string {
	if a == nil {
		return def
	}
	s := c.str(a, def)
	if contains(allowed, s) {
		return s
	}
	quoted := make([]string, len(allowed))
	for i, x := range allowed {
		quoted[i] = fmt.Sprintf("%q", x)
	}
	c.errAt(a, "Invalid value", fmt.Sprintf("%s = %q is not allowed; use %s.", a.Name, s, orList(quoted)))
	return def
}

// required reports a missing attribute at the block that lacks it, with an
// example of what to write.
func (c *converter) required(a *hcl.Attribute, block hcl.Range, blockName, example string) bool {
	if a != nil {
		return true
	}
	c.errRange(block, "Missing required argument", fmt.Sprintf("%s needs %s.", blockName, example))
	return false
}

// file resolves a path relative to the config file's directory (so a config
// shipped next to its certificates works from any working directory) and
// checks that it can be read.
func (c *converter) file(a *hcl.Attribute) string {
	p, ok := c.text(a)
	if !ok {
		return ""
	}
	if p == "" {
		c.errAt(a, "Invalid value", fmt.Sprintf("%s must not be empty.", a.Name))
		return ""
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(c.filename), p)
	}
	if err := c.readable(p); err != nil {
		c.errAt(a, "Unreadable file", fmt.Sprintf("%s cannot be read: %s. Relative paths start at the config file's directory.", a.Name, err))
	}
	return p
}

// template keeps an attribute's expression for per-connection evaluation
// after checking it against spec.
func (c *converter) template(a *hcl.Attribute, spec templateSpec) *Template {
	diags := checkTemplate(a.Expr, spec)
	c.diags = append(c.diags, diags...)
	if diags.HasErrors() {
		return nil
	}
	r := a.Expr.Range()
	src := ""
	if r.Start.Byte >= 0 && r.End.Byte <= len(c.src) && r.Start.Byte <= r.End.Byte {
		src = string(c.src[r.Start.Byte:r.End.Byte])
	}
	return &Template{expr: a.Expr, src: src, funcs: templateFuncs()}
}

// pos renders a range's start as file:line:col for "already defined at".
func pos(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}
