package main

// The docs' HCL must work when copied: every ```hcl block in README.md,
// docs/config.md and examples/README.md goes through config.Parse, the
// loader `wsidecar validate` uses. A block that is a whole config is parsed
// as it is; a block that is a fragment (a few top-level blocks) gets the
// smallest backend and route it lacks. To show HCL that is not meant to
// validate, fence it as ```text.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wsidecar/wsidecar/config"
)

// docFiles are the documents whose HCL blocks must validate.
var docFiles = []string{"README.md", "docs/config.md", "examples/README.md"}

// docEnv gives every env("NAME") without a default that the docs use a
// value that validates. A new name in the docs needs a line here.
var docEnv = map[string]string{
	"WSIDECAR_ADMIN_TOKEN":    "admin-token-0123456789abcdef",
	"SIDECAR_ADMIN_TOKEN":     "admin-token-0123456789abcdef",
	"WSIDECAR_SIGNING_SECRET": "signing-secret-0123456789abcdef0123456789",
	"SIGNING_SECRET":          "signing-secret-0123456789abcdef0123456789",
	"JWT_SECRET":              "jwt-secret-0123456789abcdef0123456789abcdef",
	"REDIS_URL":               "redis://127.0.0.1:6379/0",
}

// hclBlock is one fenced ```hcl block of a document.
type hclBlock struct {
	file string
	line int // of the opening fence
	src  string
}

var fence = regexp.MustCompile("^\\s*(```+|~~~+)\\s*([A-Za-z0-9_-]*)")

// hclBlocks returns the ```hcl blocks of a Markdown document.
func hclBlocks(file, text string) []hclBlock {
	var out []hclBlock
	var cur *hclBlock
	var marker string
	for i, line := range strings.Split(text, "\n") {
		m := fence.FindStringSubmatch(line)
		switch {
		case cur == nil && marker == "" && m != nil:
			marker = m[1]
			if m[2] == "hcl" {
				cur = &hclBlock{file: file, line: i + 1}
			}
		case marker != "" && m != nil && m[1] == marker && m[2] == "":
			if cur != nil {
				out = append(out, *cur)
			}
			cur, marker = nil, ""
		case cur != nil:
			cur.src += line + "\n"
		}
	}
	return out
}

// topLevel reports whether src has a top-level block of type name.
func topLevel(src, name string) bool {
	return regexp.MustCompile(`(?m)^` + name + `(\s+"[^"]*")?\s*\{`).MatchString(src)
}

// complete adds what a fragment lacks to be a whole config.
func complete(src string) string {
	if !topLevel(src, "backend") {
		src += "\n# added by the test: a fragment needs a backend\nbackend {\n  url = \"http://127.0.0.1:3000\"\n}\n"
	}
	if !topLevel(src, "route") {
		src += "\n# added by the test: a fragment needs a route\nroute \"/docs-test\" {\n  auth = \"none\"\n}\n"
	}
	return src
}

// docFilesDir holds the files the docs point at under /etc/wsidecar/: a
// certificate pair and a public key, all real PEM.
func docFilesDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "docs.test"},
		DNSNames:     []string{"docs.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string]*pem.Block{
		"tls.crt": {Type: "CERTIFICATE", Bytes: cert},
		"tls.key": {Type: "PRIVATE KEY", Bytes: priv},
		"jwt.pub": {Type: "PUBLIC KEY", Bytes: pub},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var envCall = regexp.MustCompile(`env\(\s*"([^"]+)"\s*\)`)

func TestDocsHCLValidates(t *testing.T) {
	files := docFilesDir(t)
	for name, v := range docEnv {
		t.Setenv(name, v)
	}
	total := 0
	for _, file := range docFiles {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		blocks := hclBlocks(file, string(text))
		if len(blocks) == 0 {
			t.Errorf("%s: no ```hcl blocks found; has the document changed shape?", file)
		}
		for _, b := range blocks {
			total++
			t.Run(fmt.Sprintf("%s:%d", b.file, b.line), func(t *testing.T) {
				for _, m := range envCall.FindAllStringSubmatch(b.src, -1) {
					if _, ok := docEnv[m[1]]; !ok {
						t.Errorf("env(%q) has no default and no test value; add one to docEnv in readme_test.go", m[1])
					}
				}
				src := strings.ReplaceAll(complete(b.src), "/etc/wsidecar/", files+"/")
				// Blank lines in front make diagnostics point at the
				// document's own line numbers.
				src = strings.Repeat("\n", b.line) + src
				if _, err := config.Parse([]byte(src), b.file); err != nil {
					var out strings.Builder
					printConfigError(&out, err)
					t.Errorf("the ```hcl block at %s:%d does not validate:\n%s\nas parsed (after the document's line %d):\n%s", b.file, b.line, out.String(), b.line, strings.TrimLeft(src, "\n"))
				}
			})
		}
	}
	t.Logf("%d hcl blocks validated", total)
}

// The extractor itself: fences of other languages, longer fences and
// unterminated blocks.
func TestHCLBlocks(t *testing.T) {
	doc := "# t\n```sh\nwsidecar validate x\n```\n\n```hcl\na = 1\n```\n" +
		"````md\n```hcl\nnot = \"this\"\n```\n````\n" +
		"~~~hcl\nb = 2\n~~~\n```hcl\nunterminated = 3\n"
	got := hclBlocks("doc.md", doc)
	if len(got) != 2 || got[0].src != "a = 1\n" || got[0].line != 6 || got[1].src != "b = 2\n" {
		t.Errorf("hclBlocks = %+v; want the two terminated top-level hcl blocks", got)
	}
	if !topLevel("backend {\n}", "backend") || topLevel("  backend {\n}", "backend") || !topLevel(`route "/x" {`, "route") {
		t.Error("topLevel misreads block headers")
	}
}
