package config

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// Load reads and parses the sidecar.hcl at path. A file that cannot be read
// yields a wrapped I/O error (errors.Is(err, fs.ErrNotExist) works); a file
// that does not parse or validate yields a Diagnostics.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	return Parse(src, path)
}

// Parse parses and validates sidecar.hcl source. filename names the source
// in diagnostics and is the base for relative file paths (tls, pem_file).
// env() reads the process environment. On failure the error is a
// Diagnostics holding every problem found, in file order.
func Parse(src []byte, filename string) (*Config, error) {
	return defaultLoader().parse(src, filename)
}

// Validate loads the file at path and writes every problem to w (without
// color), for `wsidecar validate FILE`. It returns nil when the file is
// valid, after writing a one-line summary; otherwise the returned error
// has already been written to w and the caller should only exit non-zero.
func Validate(path string, w io.Writer) error {
	cfg, err := Load(path)
	if err != nil {
		var d Diagnostics
		if errors.As(err, &d) {
			if werr := d.Write(w, false); werr != nil {
				return errors.Join(err, werr)
			}
			return err
		}
		fmt.Fprintln(w, err)
		return err
	}
	_, err = fmt.Fprintf(w, "%s: valid (%s, %s)\n", path, count(len(cfg.Routes), "route"), count(len(cfg.Streams), "stream"))
	return err
}

func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// Diagnostics is the error Parse and Load return for an invalid config: the
// HCL diagnostics plus the parsed sources, so they can be printed with
// source snippets.
type Diagnostics struct {
	// Diags are the problems, sorted by position. Warnings never make
	// Parse fail on their own.
	Diags hcl.Diagnostics
	// Files maps each filename in Diags to its parsed file (for snippets).
	Files map[string]*hcl.File
}

// Error returns the first problem in file:line,col form and a count of the
// others; Write gives the full picture.
func (d Diagnostics) Error() string {
	return "config: " + d.Diags.Error()
}

// Unwrap exposes the hcl.Diagnostics for errors.As.
func (d Diagnostics) Unwrap() error { return d.Diags }

// Write prints every diagnostic as "file:line:col: Error: summary", the
// offending source line(s) and the detail. color adds VT100 highlighting
// for terminals.
func (d Diagnostics) Write(w io.Writer, color bool) error {
	tw := hcl.NewDiagnosticTextWriter(w, d.Files, 0, color)
	for _, diag := range d.Diags {
		if diag.Subject != nil {
			s := diag.Subject
			if _, err := fmt.Fprintf(w, "%s:%d:%d: ", s.Filename, s.Start.Line, s.Start.Column); err != nil {
				return fmt.Errorf("config: write diagnostics: %w", err)
			}
		}
		if err := tw.WriteDiagnostic(diag); err != nil {
			return fmt.Errorf("config: write diagnostics: %w", err)
		}
	}
	return nil
}

// loader carries the outside world Parse depends on, so tests can supply
// an environment and a file system without touching the process's.
type loader struct {
	lookupEnv func(string) (string, bool)
	// readable reports whether a referenced file (certificate, PEM key)
	// can be opened; nil error means yes.
	readable func(path string) error
	// nodeID makes the default cluster node id.
	nodeID func() string
}

func defaultLoader() loader {
	return loader{lookupEnv: os.LookupEnv, readable: fileReadable, nodeID: defaultNodeID}
}

func (l loader) parse(src []byte, filename string) (*Config, error) {
	p := hclparse.NewParser()
	file, diags := p.ParseHCL(src, filename)
	files := p.Files()
	if diags.HasErrors() || file == nil || file.Body == nil {
		// Checking a half-parsed body would bury the syntax error under
		// "missing block" noise; fix the syntax first.
		return nil, Diagnostics{Diags: sortDiags(diags), Files: files}
	}

	ctx := l.evalContext()
	var raw rawFile
	diags = append(diags, gohcl.DecodeBody(file.Body, ctx, &raw)...)

	c := &converter{ctx: ctx, loader: l, filename: filename, src: src}
	cfg := c.config(&raw, file.Body)
	diags = append(diags, c.diags...)

	if diags.HasErrors() {
		return nil, Diagnostics{Diags: sortDiags(diags), Files: files}
	}
	return cfg, nil
}

// evalContext is what ordinary attributes see at load time: no variables,
// only env().
func (l loader) evalContext() *hcl.EvalContext {
	return &hcl.EvalContext{
		Functions: map[string]function.Function{"env": envFunc(l.lookupEnv)},
	}
}

// envFunc is env("NAME") / env("NAME", "default"). Without a default an
// unset variable is an error at the call: a secret that silently became ""
// is worse than a sidecar that refuses to start. A variable set to the
// empty string counts as set.
func envFunc(lookup func(string) (string, bool)) function.Function {
	return function.New(&function.Spec{
		Description: "Reads an environment variable; fails when it is unset and no default is given.",
		Params:      []function.Parameter{{Name: "name", Type: cty.String}},
		VarParam:    &function.Parameter{Name: "default", Type: cty.String},
		Type:        function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			name := args[0].AsString()
			if len(args) > 2 {
				return cty.NilVal, function.NewArgErrorf(2, "env takes a name and at most one default")
			}
			if name == "" {
				return cty.NilVal, function.NewArgErrorf(0, "the variable name must not be empty")
			}
			if v, ok := lookup(name); ok {
				return cty.StringVal(v), nil
			}
			if len(args) == 2 {
				return args[1], nil
			}
			return cty.NilVal, fmt.Errorf("environment variable %q is not set; set it, or give a default: env(%q, \"value\")", name, name)
		},
	})
}

// fileReadable opens and closes path: the check that matters is whether
// the sidecar will be able to read it, not whether it exists.
func fileReadable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	f.Close()
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory", path)
	}
	return nil
}

// defaultNodeID is hostname plus a random suffix, so two replicas sharing
// a hostname (or a restarted pod) never share a node topic.
func defaultNodeID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "wsidecar"
	}
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return host + "-" + hex.EncodeToString(b[:])
}

// sortDiags orders diagnostics by file position so output is stable (gohcl
// walks maps) and reads top to bottom; position-less ones come first.
func sortDiags(diags hcl.Diagnostics) hcl.Diagnostics {
	sort.SliceStable(diags, func(i, j int) bool {
		a, b := diags[i], diags[j]
		switch {
		case a.Subject == nil || b.Subject == nil:
			return a.Subject == nil && b.Subject != nil
		case a.Subject.Filename != b.Subject.Filename:
			return a.Subject.Filename < b.Subject.Filename
		case a.Subject.Start.Byte != b.Subject.Start.Byte:
			return a.Subject.Start.Byte < b.Subject.Start.Byte
		case a.Summary != b.Summary:
			return a.Summary < b.Summary
		}
		return a.Detail < b.Detail
	})
	return diags
}
