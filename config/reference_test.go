package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// schemaAttrs walks the gohcl tags of the raw structs and returns every
// attribute as "block.path.attr" and every block path.
func schemaAttrs(t reflect.Type, prefix string, attrs, blocks map[string]bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, ok := f.Tag.Lookup("hcl")
		if !ok {
			continue
		}
		name, kind, _ := strings.Cut(tag, ",")
		switch kind {
		case "", "attr", "optional":
			attrs[prefix+name] = true
		case "block":
			ft := f.Type
			for ft.Kind() == reflect.Slice || ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			blocks[prefix+name] = true
			schemaAttrs(ft, prefix+name+".", attrs, blocks)
		}
	}
}

// TestReferenceCoversSchema: every attribute gohcl accepts is documented,
// and nothing is documented that gohcl would reject.
func TestReferenceCoversSchema(t *testing.T) {
	schema, schemaBlocks := map[string]bool{}, map[string]bool{}
	schemaAttrs(reflect.TypeFor[rawFile](), "", schema, schemaBlocks)

	documented, docBlocks := map[string]bool{}, map[string]bool{}
	for _, b := range reference {
		if docBlocks[b.Path] {
			t.Errorf("block %s documented twice", b.Path)
		}
		docBlocks[b.Path] = true
		for _, a := range b.Attrs {
			key := b.Path + "." + a.Name
			if documented[key] {
				t.Errorf("%s documented twice", key)
			}
			documented[key] = true
			if a.Doc == "" || a.Type == "" || a.Example == "" {
				t.Errorf("%s lacks a type, description or example", key)
			}
			if a.Required && (a.Default != "" || a.DefaultNote != "") {
				t.Errorf("%s is required and has a default", key)
			}
		}
	}
	for _, k := range diffKeys(schema, documented) {
		t.Errorf("attribute %s is in schema.go but not in reference.go", k)
	}
	for _, k := range diffKeys(documented, schema) {
		t.Errorf("attribute %s is documented but schema.go does not accept it", k)
	}
	for _, k := range diffKeys(schemaBlocks, docBlocks) {
		t.Errorf("block %s is in schema.go but not in reference.go", k)
	}
	for _, k := range diffKeys(docBlocks, schemaBlocks) {
		t.Errorf("block %s is documented but schema.go does not accept it", k)
	}
}

func diffKeys(a, b map[string]bool) []string {
	var out []string
	for k := range a {
		if !b[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// hblock is a tiny HCL writer, so tests can set one attribute in an
// otherwise fixed file.
type hblock struct {
	typ, label string
	attrs      []string
	blocks     []*hblock
}

func (b *hblock) find(path []string) *hblock {
	if len(path) == 0 {
		return b
	}
	for _, c := range b.blocks {
		if c.typ == path[0] {
			return c.find(path[1:])
		}
	}
	return nil
}

func (b *hblock) set(name, expr string) {
	b.del(name)
	b.attrs = append(b.attrs, name+" = "+expr)
}

func (b *hblock) del(name string) {
	kept := b.attrs[:0]
	for _, a := range b.attrs {
		if !strings.HasPrefix(a, name+" = ") {
			kept = append(kept, a)
		}
	}
	b.attrs = kept
}

func (b *hblock) render(w *strings.Builder, indent string) {
	for _, a := range b.attrs {
		w.WriteString(indent + a + "\n")
	}
	for _, c := range b.blocks {
		w.WriteString(indent + c.typ)
		if c.label != "" {
			w.WriteString(` "` + c.label + `"`)
		}
		w.WriteString(" {\n")
		c.render(w, indent+"  ")
		w.WriteString(indent + "}\n")
	}
}

func (b *hblock) String() string {
	var w strings.Builder
	b.render(&w, "")
	return w.String()
}

func blk(typ, label string, attrs []string, kids ...*hblock) *hblock {
	return &hblock{typ: typ, label: label, attrs: attrs, blocks: kids}
}

// fullBase is a valid file with every block present and only the
// attributes a block cannot do without, so that setting any one attribute
// exercises it.
func fullBase() *hblock {
	return blk("", "", nil,
		blk("listener", "", nil, blk("tls", "", []string{`cert_file = "c.pem"`, `key_file = "k.pem"`})),
		blk("admin", "", nil),
		blk("backend", "", []string{`url = "http://backend.test:3000"`}, blk("breaker", "", nil)),
		blk("origins", "", nil),
		blk("jwt", "", nil, blk("key", "k", []string{`algorithms = ["RS256"]`, `jwks_url = "https://idp.test/jwks"`})),
		blk("limits", "", nil),
		blk("heartbeat", "", nil),
		blk("drain", "", nil),
		blk("log", "", nil),
		blk("route", "/ws/{room}", nil, blk("origins", "", nil)),
		blk("stream", "s", []string{`path = "/base-events"`}),
		blk("cluster", "", []string{`node_id = "n1"`}, blk("redis", "", []string{`url = "redis://base.test:6379"`})),
	)
}

// keyFor makes the base key fit an attribute that excludes jwks_url.
func keyFor(base *hblock, attr string) {
	key := base.find([]string{"jwt", "key"})
	switch attr {
	case "secret":
		key.del("jwks_url")
		key.set("algorithms", `["HS256"]`)
	case "pem_file":
		key.del("jwks_url")
	}
}

func parseBase(t *testing.T, b *hblock) *Config {
	t.Helper()
	return mustParse(t, b.String())
}

// TestReferenceDefaults: writing a documented default explicitly gives the
// same Config as leaving the attribute out.
func TestReferenceDefaults(t *testing.T) {
	base := parseBase(t, fullBase())
	for _, b := range reference {
		for _, a := range b.Attrs {
			if a.Default == "" {
				continue
			}
			t.Run(b.Path+"."+a.Name, func(t *testing.T) {
				f := fullBase()
				f.find(strings.Split(b.Path, ".")).set(a.Name, a.Default)
				if got := parseBase(t, f); !reflect.DeepEqual(got, base) {
					t.Errorf("documented default %s = %s is not what Parse fills in:\n got %+v\nwant %+v", a.Name, a.Default, got, base)
				}
			})
		}
	}
}

// TestReferenceExamples: every documented example is valid, and setting it
// changes the Config (so the attribute is wired to a field); every
// required attribute is really required.
func TestReferenceExamples(t *testing.T) {
	for _, b := range reference {
		path := strings.Split(b.Path, ".")
		for _, a := range b.Attrs {
			t.Run(b.Path+"."+a.Name, func(t *testing.T) {
				f := fullBase()
				keyFor(f, a.Name)
				f.find(path).set(a.Name, a.Example)
				got := parseBase(t, f)
				// secret and pem_file replace the base key's jwks_url, so
				// there is no valid "before" to compare with; Parse
				// accepting the key at all shows they are read.
				exclusive := b.Path == "jwt.key" && (a.Name == "secret" || a.Name == "pem_file")
				if !exclusive && a.Example != a.Default && reflect.DeepEqual(got, parseBase(t, fullBase())) {
					t.Errorf("setting %s = %s changed nothing in the Config", a.Name, a.Example)
				}

				if a.Required {
					f := fullBase()
					f.find(path).del(a.Name)
					_, err := testLoader().parse([]byte(f.String()), "sidecar.hcl")
					if err == nil || !strings.Contains(diagText(err), "Missing required argument") {
						t.Errorf("%s is documented as required, but leaving it out gives: %v", a.Name, err)
					}
				}
			})
		}
	}
}

// TestDocsUpToDate: docs/config.md is WriteReference's output. Regenerate
// with `go test ./config -update`.
func TestDocsUpToDate(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteReference(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "docs", "config.md")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (generate it with: go test ./config -update)", err)
	}
	if !bytes.Equal(got, buf.Bytes()) {
		t.Errorf("%s is stale; regenerate it with: go test ./config -update", path)
	}
}

// TestReferenceExampleParses: the example at the top of docs/config.md is
// a valid file.
func TestReferenceExampleParses(t *testing.T) {
	cfg := mustParse(t, referenceExample)
	if len(cfg.Routes) != 2 || cfg.JWT == nil || cfg.Cluster == nil || cfg.Listener.TLS == nil {
		t.Errorf("example lost a block: %+v", cfg)
	}
}
