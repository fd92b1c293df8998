package main

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/wsidecar/wsidecar/auth"
	"github.com/wsidecar/wsidecar/config"
)

// claimFlags collects repeated -claim k=v flags.
type claimFlags map[string]any

func (c claimFlags) String() string { return "" }

// Set parses NAME=VALUE. VALUE is taken as JSON when it is valid JSON
// (numbers stay exact), else as a plain string, so -claim org=acme and
// -claim roles='["admin"]' both do what they look like.
func (c claimFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want NAME=VALUE (e.g. -claim role=admin), got %q", s)
	}
	c[k] = claimValue(v)
	return nil
}

func claimValue(v string) any {
	dec := json.NewDecoder(strings.NewReader(v))
	dec.UseNumber()
	var parsed any
	if err := dec.Decode(&parsed); err != nil {
		return v
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return v // trailing garbage: "1 2", "{} x"
	}
	return parsed
}

// tokenUsage is `wsidecar token -h`.
const tokenUsage = `Usage: wsidecar token [flags]

Mint a development JWT that the config's jwt block accepts and print it,
alone, on stdout:

  TOKEN=$(wsidecar token -sub alice -claim role=admin -ttl 15m)

A key with a secret signs with it (HS256/384/512). A key that verifies with
pem_file or jwks_url needs the matching private key (-pem). iss and aud come
from the jwt block, iat is now, exp is now + -ttl, kid is the key's kid.

Flags:
  -config FILE       config file (default ./sidecar.hcl, env WSIDECAR_CONFIG)
  -key NAME          jwt key block to sign with (default: the first one)
  -pem FILE          private key PEM for pem_file/jwks_url keys: PKCS #8,
                     PKCS #1 or SEC 1; RSA, ECDSA or Ed25519; not encrypted
  -sub USER          the sub claim (the user id)
  -ttl DURATION      lifetime, e.g. 15m (default 1h); 0 leaves out exp, which
                     only a jwt block with require_exp = false accepts
  -claim NAME=VALUE  an extra claim, repeatable; VALUE is JSON when it parses
                     (42, true, ["a","b"]), else a string; -claim 'zip="01234"'
                     keeps a string that looks like a number

Present it the way the jwt block's sources say (default: any of these):
  Authorization: Bearer $TOKEN                       header
  new WebSocket(url, ["bearer", token])              protocol
  ws://host:8080/ws?access_token=$TOKEN              query:access_token
`

// cmdToken mints a development JWT that the config's jwt block accepts.
// Only the token goes to stdout, so TOKEN=$(wsidecar token …) works; hints
// and errors go to stderr.
func cmdToken(args []string, stdout, stderr io.Writer) int {
	flags := newFlagSet("token", stderr)
	path := flags.String("config", envOr("WSIDECAR_CONFIG", "sidecar.hcl"), "config file whose jwt block the token must satisfy")
	keyName := flags.String("key", "", "jwt key block to sign with (default: the first)")
	pemFile := flags.String("pem", "", "private key PEM, for keys that verify with pem_file or jwks_url")
	sub := flags.String("sub", "", "subject (user id)")
	ttl := flags.Duration("ttl", time.Hour, "lifetime")
	claims := claimFlags{}
	flags.Var(claims, "claim", "extra claim NAME=VALUE (repeatable; VALUE is JSON when it parses)")
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "wsidecar token: "+format+"\n", a...)
		return exitConfig
	}
	// The flag package would print the whole usage after every mistake,
	// burying the one line that matters; -h alone gets the usage, on stdout.
	flags.SetOutput(io.Discard)
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, tokenUsage)
			return exitOK
		}
		return fail("%v\nrun 'wsidecar token -h' for its flags", err)
	}
	if flags.NArg() > 0 {
		return fail("unexpected argument %q: flags only (e.g. wsidecar token -sub alice -claim role=admin)", flags.Arg(0))
	}
	if *ttl < 0 {
		return fail("-ttl %v is negative; give a lifetime such as 1h", *ttl)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fail("%v\npass the sidecar's config with -config FILE (or set WSIDECAR_CONFIG)", err)
		}
		printConfigError(stderr, err)
		return exitConfig
	}
	if cfg.JWT == nil || len(cfg.JWT.Keys) == 0 {
		return fail("%s has no jwt block, so its routes take no tokens; add one with a key (see docs/config.md, \"jwt\"), e.g.\n"+
			"  jwt {\n    key \"dev\" {\n      algorithms = [\"HS256\"]\n      secret     = env(\"JWT_SECRET\")\n    }\n  }", cfg.Path)
	}
	key := cfg.JWT.Keys[0]
	if *keyName != "" {
		i := slices.IndexFunc(cfg.JWT.Keys, func(k config.JWTKey) bool { return k.Name == *keyName })
		if i < 0 {
			return fail("no jwt key %q in %s; its keys are %s", *keyName, cfg.Path, keyNames(cfg.JWT.Keys))
		}
		key = cfg.JWT.Keys[i]
	}

	var signer crypto.Signer
	switch {
	case key.Secret != "" && *pemFile != "":
		return fail("key %q is an HMAC key (secret): the token is signed with its secret; drop -pem", key.Name)
	case key.Secret == "" && *pemFile == "":
		from := "pem_file " + key.PEMFile
		if key.JWKSURL != "" {
			from = "the JWKS at " + key.JWKSURL
		}
		return fail("key %q verifies with a public key (%s); pass the matching private key with -pem FILE", key.Name, from)
	case *pemFile != "":
		if signer, err = auth.LoadPrivateKeyPEM(*pemFile); err != nil {
			return fail("-pem: %v", err)
		}
	}

	if *sub != "" {
		claims["sub"] = *sub
	}
	if _, ok := claims["exp"]; !ok && *ttl == 0 && cfg.JWT.RequireExp {
		return fail("-ttl 0 means no exp, and %s requires one (jwt.require_exp); give a lifetime such as 1h", cfg.Path)
	}
	for _, name := range cfg.JWT.RequiredClaims {
		if _, ok := claims[name]; ok || isRegistered(name, cfg.JWT) {
			continue
		}
		if name == "sub" {
			return fail("%s requires claim \"sub\"; pass -sub USER", cfg.Path)
		}
		return fail("%s requires claim %q; pass -claim %s=VALUE", cfg.Path, name, name)
	}

	tok, err := auth.Mint(*cfg.JWT, key, claims, *ttl, signer)
	if err != nil {
		return fail("%v", err)
	}
	if uc := cfg.JWT.UserClaim; uc != "" && uc != "sub" && claims[uc] == nil {
		fmt.Fprintf(stderr, "wsidecar token: note: %s takes the user from claim %q (jwt.user_claim), which this token lacks; add -claim %s=USER\n", cfg.Path, uc, uc)
	}
	fmt.Fprintln(stdout, tok)
	return exitOK
}

// isRegistered reports whether Mint fills in the claim itself.
func isRegistered(name string, j *config.JWT) bool {
	switch name {
	case "iat", "exp":
		return true
	case "iss":
		return j.Issuer != ""
	case "aud":
		return len(j.Audience) > 0
	}
	return false
}

// keyNames lists key names for an error message: "a", "b".
func keyNames(keys []config.JWTKey) string {
	var b bytes.Buffer
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", k.Name)
	}
	return b.String()
}
