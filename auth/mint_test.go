package auth

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/wsidecar/wsidecar/config"
)

func writePrivatePEM(t *testing.T, typ string, der []byte) string {
	t.Helper()
	return writeFile(t, "priv.pem", pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

// What `wsidecar token` mints, the sidecar configured the same way accepts.
func TestMintRoundTrip(t *testing.T) {
	k := testKeys(t)
	pkcs8 := func(key any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	ecDER, err := x509.MarshalECPrivateKey(k.ec384)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		key     config.JWTKey
		privPEM string // "" for HMAC
		alg     string
	}{
		{"HMAC", config.JWTKey{Name: "h", Algorithms: []string{"HS512"}, Secret: secret64, KeyID: "dev"}, "", "HS512"},
		{"HMAC default alg", config.JWTKey{Name: "h", Secret: secretPinned}, "", "HS256"},
		{"RSA PKCS#1, PS256 pinned", config.JWTKey{Name: "r", Algorithms: []string{"PS256"}, PEMFile: writePublicPEM(t, &k.rsa.PublicKey)},
			writePrivatePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.rsa)), "PS256"},
		{"ECDSA SEC 1 against a certificate", config.JWTKey{Name: "e", Algorithms: []string{"ES384"}, PEMFile: writeCertPEM(t, k.ec384)},
			writePrivatePEM(t, "EC PRIVATE KEY", ecDER), "ES384"},
		{"Ed25519 PKCS#8", config.JWTKey{Name: "d", Algorithms: []string{"EdDSA"}, PEMFile: writePublicPEM(t, k.ed.Public())},
			writePrivatePEM(t, "PRIVATE KEY", pkcs8(k.ed)), "EdDSA"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := baseJWT()
			cfg.Keys = []config.JWTKey{c.key}
			var signer crypto.Signer
			if c.privPEM != "" {
				var err error
				if signer, err = LoadPrivateKeyPEM(c.privPEM); err != nil {
					t.Fatal(err)
				}
			}
			tok, err := mintAt(testNow, cfg, c.key, map[string]any{"sub": "dev-user", "tenant": "acme"}, 10*time.Minute, signer)
			if err != nil {
				t.Fatalf("mint: %v", err)
			}
			h, err := parseJWSHeader(tok)
			if err != nil || h.Alg != c.alg || h.Kid != c.key.KeyID {
				t.Fatalf("header = %+v, %v; want alg %s kid %q", h, err, c.alg, c.key.KeyID)
			}
			id, err := newTestVerifier(t, cfg, VerifierOptions{}).Verify(context.Background(), tok)
			if err != nil {
				t.Fatalf("minted token refused: %v", err)
			}
			if id.User != "dev-user" || id.Claims["iss"] != "https://issuer.test" || id.Claims["aud"] == nil {
				t.Errorf("identity = %+v", id)
			}
			if !id.ExpiresAt.Equal(testNow.Add(10 * time.Minute)) {
				t.Errorf("ExpiresAt = %v", id.ExpiresAt)
			}
		})
	}
}

func TestMintRefuses(t *testing.T) {
	k := testKeys(t)
	other, err := x509.MarshalPKCS8PrivateKey(k.ec2)
	if err != nil {
		t.Fatal(err)
	}
	otherSigner, err := LoadPrivateKeyPEM(writePrivatePEM(t, "PRIVATE KEY", other))
	if err != nil {
		t.Fatal(err)
	}
	ecKey := config.JWTKey{Name: "e", Algorithms: []string{"ES256"}, PEMFile: writePublicPEM(t, &k.ec256.PublicKey)}
	claims := map[string]any{"tenant": "acme"}
	cases := []struct {
		name   string
		key    config.JWTKey
		claims map[string]any
		ttl    time.Duration
		signer crypto.Signer
		want   string
	}{
		{"public-key key without signer", ecKey, claims, time.Hour, nil, "no secret"},
		{"signer not matching pem_file", ecKey, claims, time.Hour, otherSigner, "does not match"},
		{"signer for an HMAC key", config.JWTKey{Name: "h", Secret: secret64}, claims, time.Hour, k.ec256, "HMAC key"},
		{"signer that fits no algorithm", config.JWTKey{Name: "j", Algorithms: []string{"RS256"}, JWKSURL: "https://idp.test/jwks"}, claims, time.Hour, k.ec256, "fits"},
		{"short secret", config.JWTKey{Name: "h", Secret: "short"}, claims, time.Hour, nil, "at least 32"},
		{"no ttl while exp is required", config.JWTKey{Name: "h", Secret: secret64}, claims, 0, nil, "requires exp"},
		{"required claim missing", config.JWTKey{Name: "h", Secret: secret64}, map[string]any{"sub": "x"}, time.Hour, nil, `"tenant"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Mint(baseJWT(), c.key, c.claims, c.ttl, c.signer)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestMintKeepsExplicitClaims(t *testing.T) {
	key := config.JWTKey{Name: "h", Secret: secret64}
	tok, err := mintAt(testNow, baseJWT(), key, map[string]any{"tenant": "a", "aud": "other-service", "exp": testNow.Add(-time.Minute).Unix()}, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(tok, claims); err != nil {
		t.Fatal(err)
	}
	if claims["aud"] != "other-service" || int64(claims["exp"].(float64)) != testNow.Add(-time.Minute).Unix() {
		t.Errorf("explicit claims overridden: %v", claims)
	}
	if _, err := LoadPrivateKeyPEM(writePublicPEM(t, &testKeys(t).ec256.PublicKey)); err == nil {
		t.Error("LoadPrivateKeyPEM accepted a public key")
	}
}
