package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/wsidecar/wsidecar/config"
)

// Mint signs a development token that a Verifier built from cfg accepts
// (for `wsidecar token`). With signer nil it signs with key's HMAC secret;
// otherwise with signer (from LoadPrivateKeyPEM), using the first of key's
// algorithms that fits it. It sets iss and aud from cfg, iat, and exp when
// ttl > 0, unless claims already has them; key.KeyID becomes the kid.
func Mint(cfg config.JWT, key config.JWTKey, claims map[string]any, ttl time.Duration, signer crypto.Signer) (string, error) {
	return mintAt(time.Now(), cfg, key, claims, ttl, signer)
}

func mintAt(now time.Time, cfg config.JWT, key config.JWTKey, claims map[string]any, ttl time.Duration, signer crypto.Signer) (string, error) {
	alg, signKey, err := mintKey(key, signer)
	if err != nil {
		return "", fmt.Errorf("mint: key %q: %w", key.Name, err)
	}
	mc := jwt.MapClaims{}
	maps.Copy(mc, claims)
	setDefault := func(name string, v any) {
		if _, ok := mc[name]; !ok {
			mc[name] = v
		}
	}
	if cfg.Issuer != "" {
		setDefault("iss", cfg.Issuer)
	}
	switch len(cfg.Audience) {
	case 0:
	case 1:
		setDefault("aud", cfg.Audience[0])
	default:
		setDefault("aud", cfg.Audience)
	}
	setDefault("iat", now.Unix())
	if ttl > 0 {
		setDefault("exp", now.Add(ttl).Unix())
	}
	if _, ok := mc["exp"]; !ok && cfg.RequireExp {
		return "", errors.New("mint: the config requires exp: give a positive ttl")
	}
	for _, name := range cfg.RequiredClaims {
		if mc[name] == nil {
			return "", fmt.Errorf("mint: the config requires claim %q", name)
		}
	}
	t := jwt.NewWithClaims(jwt.GetSigningMethod(alg), mc)
	if key.KeyID != "" {
		t.Header["kid"] = key.KeyID
	}
	s, err := t.SignedString(signKey)
	if err != nil {
		return "", fmt.Errorf("mint: sign %s: %w", alg, err)
	}
	return s, nil
}

// mintKey picks the algorithm and signing key for Mint, refusing
// combinations the Verifier would refuse.
func mintKey(key config.JWTKey, signer crypto.Signer) (alg string, signKey any, err error) {
	if signer == nil {
		if key.Secret == "" {
			return "", nil, errors.New("it has no secret: give its private key")
		}
		secret := []byte(key.Secret)
		algs := key.Algorithms
		if len(algs) == 0 {
			algs = defaultAlgs(secret)
		}
		for _, a := range algs {
			if isHMACAlg(a) && supportedAlgs[a] {
				if len(secret) < hmacMinLen(a) {
					return "", nil, fmt.Errorf("%s needs a secret of at least %d bytes", a, hmacMinLen(a))
				}
				return a, secret, nil
			}
		}
		return "", nil, errors.New("none of its algorithms is HMAC")
	}
	if key.Secret != "" {
		return "", nil, errors.New("it is an HMAC key: sign with its secret, not a private key")
	}
	pub := signer.Public()
	if key.PEMFile != "" {
		want, err := loadPublicKeyPEM(key.PEMFile)
		if err != nil {
			return "", nil, err
		}
		if eq, ok := want.(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(pub) {
			return "", nil, errors.New("the private key does not match its pem_file")
		}
	}
	switch signer.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
		signKey = signer
	default:
		return "", nil, fmt.Errorf("unsupported signer %T", signer)
	}
	algs := key.Algorithms
	if len(algs) == 0 {
		algs = defaultAlgs(pub)
	}
	for _, a := range algs {
		if supportedAlgs[a] && algFitsKey(a, pub) {
			return a, signKey, nil
		}
	}
	return "", nil, fmt.Errorf("none of its algorithms %v fits a %s key", algs, keyKind(pub))
}
