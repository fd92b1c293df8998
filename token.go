package main

import (
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/wsidecar/wsidecar/auth"
	"github.com/wsidecar/wsidecar/config"
)

// claimFlags collects repeated -claim k=v flags.
type claimFlags map[string]any

func (c claimFlags) String() string { return "" }

func (c claimFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want k=v, got %q", s)
	}
	var parsed any
	if err := json.Unmarshal([]byte(v), &parsed); err == nil {
		c[k] = parsed
	} else {
		c[k] = v
	}
	return nil
}

// cmdToken mints a development JWT that the config's jwt block accepts.
func cmdToken(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("token", stderr)
	path := fs.String("config", envOr("WSIDECAR_CONFIG", "sidecar.hcl"), "config file")
	keyName := fs.String("key", "", "jwt key block to sign with (default: the first)")
	pemFile := fs.String("pem", "", "private key PEM for RS*/PS*/ES*/EdDSA keys")
	sub := fs.String("sub", "", "subject (user id)")
	ttl := fs.Duration("ttl", time.Hour, "lifetime")
	claims := claimFlags{}
	fs.Var(claims, "claim", "extra claim k=v (repeatable)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	cfg, err := config.Load(*path)
	if err != nil {
		printConfigError(stderr, err)
		return exitConfig
	}
	if cfg.JWT == nil || len(cfg.JWT.Keys) == 0 {
		fmt.Fprintf(stderr, "wsidecar token: %s has no jwt block with a key; add one (see docs/config.md, \"jwt\")\n", cfg.Path)
		return exitConfig
	}
	key := cfg.JWT.Keys[0]
	if *keyName != "" {
		found := false
		for _, k := range cfg.JWT.Keys {
			if k.Name == *keyName {
				key, found = k, true
			}
		}
		if !found {
			fmt.Fprintf(stderr, "wsidecar token: no jwt key %q in %s\n", *keyName, cfg.Path)
			return exitConfig
		}
	}
	var signer crypto.Signer
	if key.Secret == "" {
		if *pemFile == "" {
			fmt.Fprintf(stderr, "wsidecar token: key %q verifies with a public key; pass its private key with -pem FILE\n", key.Name)
			return exitConfig
		}
		if signer, err = auth.LoadPrivateKeyPEM(*pemFile); err != nil {
			fmt.Fprintf(stderr, "wsidecar token: %v\n", err)
			return exitConfig
		}
	}
	if *sub != "" {
		claims["sub"] = *sub
	}
	tok, err := auth.Mint(*cfg.JWT, key, claims, *ttl, signer)
	if err != nil {
		fmt.Fprintf(stderr, "wsidecar token: %v\n", err)
		return exitFail
	}
	fmt.Fprintln(stdout, tok)
	return exitOK
}
